"""`edgekit bench --metric`: macro recall, macro F1, top-k and recall@k on users' labelled
data, and the classification numbers every classification result carries."""

import json

import numpy as np
import pytest
import torch

import edgekit
from edgekit.cli import main
from edgekit.errors import UnknownNameError
from edgekit.measure.metrics import recall_at_k, topk_accuracy
from edgekit.measure.scoring import plain_metric

pytest.importorskip("onnxruntime")


def test_recall_at_k_and_topk_hand_computed():
    scores = np.array([[0.9, 0.1, 0.5, 0.3],
                       [0.2, 0.8, 0.7, 0.1],
                       [0.1, 0.2, 0.3, 0.4]])
    # one relevant item per query: ranks of items 2, 0, 0 are 2nd, 3rd, 4th
    idx = np.array([2, 0, 0])
    assert recall_at_k(scores, idx, 1) == 0.0
    assert recall_at_k(scores, idx, 2) == pytest.approx(100 / 3)
    assert recall_at_k(scores, idx, 3) == pytest.approx(200 / 3)
    assert recall_at_k(scores, idx, 4) == 100.0
    assert recall_at_k(scores, idx, 99) == 100.0  # k beyond the gallery: all items
    assert topk_accuracy(scores, idx, 2) == recall_at_k(scores, idx, 2)
    # relevance matrix: q0 {0, 3} -> top2 {0, 2}: 1/2; q1 {2} -> top2 {1, 2}: 1;
    # q2 has nothing relevant and is left out
    rel = np.array([[1, 0, 0, 1], [0, 0, 1, 0], [0, 0, 0, 0]])
    assert recall_at_k(scores, rel, 2) == pytest.approx(75.0)
    assert recall_at_k(scores, rel, 1) == pytest.approx(25.0)  # q0: 1 of 2, q1: 0 of 1
    # ties at the k-th score: the lower item index wins
    assert recall_at_k(np.array([[1.0, 1.0, 1.0]]), np.array([0]), 1) == 100.0
    assert recall_at_k(np.array([[1.0, 1.0, 1.0]]), np.array([2]), 1) == 0.0
    with pytest.raises(ValueError, match="k >= 1"):
        recall_at_k(scores, idx, 0)
    with pytest.raises(ValueError, match="does not match"):
        recall_at_k(scores, rel[:, :3], 1)


def test_plain_metric_names():
    for name in ("top1", "top5", "recall@10", "macro_recall", "macro_f1", "mse", "auc"):
        score, higher, _ = plain_metric(name)
        assert callable(score)
        assert higher is (name != "mse")
    assert plain_metric("top5")[2] is True and plain_metric("recall@3")[2] is False
    for bad in ("top0", "recall@", "f1", "recall@-1"):
        with pytest.raises(UnknownNameError, match=f"unknown metric '{bad}'"):
            plain_metric(bad)


class _Lin(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def _macro_by_hand(pred, y, classes):
    recalls, f1s = [], []
    for c in classes:
        tp = sum(1 for p, t in zip(pred, y) if p == c and t == c)
        fn = sum(1 for p, t in zip(pred, y) if p != c and t == c)
        fp = sum(1 for p, t in zip(pred, y) if p == c and t != c)
        if tp + fn == 0:
            continue
        r = tp / (tp + fn)
        p = tp / (tp + fp) if tp + fp else 0.0
        recalls.append(r)
        f1s.append(2 * p * r / (p + r) if p + r else 0.0)
    return 100 * sum(recalls) / len(recalls), 100 * sum(f1s) / len(f1s)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("metric")
    model = d / "lin.onnx"
    torch.onnx.export(_Lin().eval(), (torch.rand(1, 6),), str(model), dynamo=True,
                      input_names=["x"], output_names=["logits"], external_data=False)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 6)).astype(np.float32)  # samples on axis 0
    with torch.no_grad():
        logits = _Lin()(torch.from_numpy(x)).numpy()
    pred = logits.argmax(1)
    y = pred.copy()
    y[:12] = (y[:12] + 1) % 4  # 12 of 60 wrong, unevenly over the classes
    y[12:15] = 3
    data = d / "data.npz"
    np.savez(data, x=x, y=y.astype(np.int64))
    return {"model": model, "data": data, "logits": logits, "y": y, "pred": pred}


@pytest.mark.parametrize("metric", ["macro_recall", "macro_f1", "top1", "top2"])
def test_bench_metric_on_labelled_npz(case, metric):
    rep = edgekit.bench(case["model"], data=case["data"], metric=metric, runs=3, warmup=0,
                        memory=False, progress=False)
    acc = rep["results"][0]["accuracy"]
    y, pred, logits = case["y"], case["pred"], case["logits"]
    mrec, mf1 = _macro_by_hand(list(pred), list(y), range(4))
    top2 = 100 * np.mean([t in np.argsort(-row)[:2] for row, t in zip(logits, y)])
    want = {"macro_recall": mrec, "macro_f1": mf1, "top1": 100 * np.mean(pred == y),
            "top2": top2}[metric]
    assert acc["metric"] == metric and acc["samples"] == 60
    assert acc["value"] == pytest.approx(want, abs=1e-9)
    # every classification result carries the three numbers users report
    cls = acc["classification"]
    assert cls["top1"] == pytest.approx(100 * np.mean(pred == y))
    assert cls["macro_recall"] == pytest.approx(mrec) and cls["macro_f1"] == pytest.approx(mf1)
    assert cls["macro_f1"] < cls["top1"]  # the uneven errors weigh more per class


def test_bench_recall_at_k_with_a_relevance_matrix(case, tmp_path, capsys):
    logits = case["logits"]
    rng = np.random.default_rng(3)
    rel = (rng.random(logits.shape) < 0.4).astype(np.int64)
    rel[np.arange(len(rel)), logits.argmax(1)] |= (np.arange(len(rel)) % 2).astype(np.int64)
    path = tmp_path / "retrieval.npz"
    np.savez(path, x=np.load(case["data"])["x"], rel=rel)
    rc = main(["bench", str(case["model"]), "--data", str(path), "--target-key", "rel",
               "--metric", "recall@2", "--runs", "3", "--warmup", "0", "--no-memory",
               "--json", "-q"])
    assert rc == 0
    acc = json.loads(capsys.readouterr().out)["results"][0]["accuracy"]
    per_query = []
    for row, r in zip(logits, rel):
        if r.sum():
            top = set(np.argsort(-row, kind="stable")[:2])
            per_query.append(sum(1 for i in top if r[i]) / r.sum())
    assert acc["metric"] == "recall@2"
    assert acc["value"] == pytest.approx(100 * np.mean(per_query))
    assert "classification" not in acc  # retrieval: no per-class numbers


def test_cli_unknown_metric_exits_2_naming_the_choices(case, capsys):
    rc = main(["bench", str(case["model"]), "--data", str(case["data"]),
               "--metric", "f1", "--runs", "3", "-q"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "unknown metric 'f1'" in err and "macro_f1" in err and "recall@10" in err
