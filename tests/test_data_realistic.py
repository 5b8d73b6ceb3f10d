"""The realistic-scale tasks: glyphs (split by font), keyword spotting (split by voice), docstring
classification (split by source file), their metrics and the zoo entries trained on them."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from edgekit.data import glyphs, kws, text
from edgekit.data.tasks import get_task
from edgekit.measure.metrics import (
    classification_metrics,
    confusion_matrix,
    macro_f1,
    macro_recall,
    mean_iou,
)

# ----------------------------------------------------------------------------- glyphs


def test_glyph_rendering_is_deterministic():
    a = glyphs.render("cmr10.ttf", "g", np.random.RandomState(7))
    b = glyphs.render("cmr10.ttf", "g", np.random.RandomState(7))
    assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()
    first = hashlib.sha256(glyphs.images("val").numpy().tobytes()).hexdigest()
    glyphs._split.cache_clear()
    glyphs._master.cache_clear()
    again = hashlib.sha256(glyphs.images("val").numpy().tobytes()).hexdigest()
    assert first == again
    other = glyphs.render("cmr10.ttf", "g", np.random.RandomState(8))[0]
    assert other.tobytes() != a[0].tobytes()  # the seed does change the augmentation


def test_glyph_splits_use_disjoint_fonts():
    train, val, test = (set(glyphs.FONT_SPLITS[s]) for s in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test)
    assert len(train | val | test) == 22
    assert set(glyphs.fonts("val")) == val
    for s in ("train", "val", "test"):
        assert (glyphs.font_dir() / glyphs.FONT_SPLITS[s][0]).is_file()


def test_glyph_shapes_dtypes_and_classes():
    assert len(glyphs.CLASSES) == 45 and len(set(glyphs.CLASSES)) == 45
    assert "I" not in glyphs.CLASSES and "O" not in glyphs.CLASSES
    x, y = glyphs.images("val"), glyphs.labels("val")
    n = len(glyphs.FONT_SPLITS["val"]) * 45 * glyphs.SAMPLES_PER_FONT["val"]
    assert x.shape == (n, 1, 64, 64) and x.dtype == torch.float32
    assert y.shape == (n,) and y.dtype == torch.int64
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert np.bincount(y.numpy(), minlength=45).tolist() == [n // 45] * 45
    ink = glyphs.ink_masks("val")
    assert ink.shape == (n, 64, 64) and ink.dtype == torch.uint8
    frac = ink.float().mean(dim=(1, 2))
    assert float(frac.min()) > 0.005 and float(frac.max()) < 0.6  # every sample has a glyph
    # ink is brighter than background on average in every sample
    img = x[:, 0]
    assert bool(((img * ink).sum((1, 2)) / ink.sum((1, 2))
                 > (img * (1 - ink)).sum((1, 2)) / (1 - ink).sum((1, 2))).all())


def test_missing_font_is_a_clear_error():
    from edgekit.errors import DataError

    with pytest.raises(DataError, match="font nofont.ttf not found"):
        glyphs.render("nofont.ttf", "A", np.random.RandomState(0))


# ----------------------------------------------------------------------------- keyword spotting


def test_kws_file_loads_with_the_mlperf_shape():
    assert kws.FEATURES_PATH.stat().st_size < 3 * 1024 * 1024
    with np.load(kws.FEATURES_PATH) as d:
        assert d["features"].dtype == np.float16 and d["features"].shape == (2400, 49, 10)
    counts = {"train": 120, "val": 40, "test": 40}
    for s, per in counts.items():
        x, y = kws.split(s)
        assert x.shape == (12 * per, 49, 10) and x.dtype == torch.float32
        assert np.bincount(y.numpy(), minlength=12).tolist() == [per] * 12
        assert torch.isfinite(x).all()
    x, _ = kws.split("train")
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1.0) < 0.05  # standardised


def test_kws_splits_use_disjoint_voices():
    voices = {s: set(kws.metadata(s)["voices"]) - {""} for s in ("train", "val", "test")}
    assert len(voices["train"]) > 60 and len(voices["test"]) > 20
    assert not (voices["train"] & voices["test"]) and not (voices["train"] & voices["val"])
    meta = kws.metadata("test")
    _, y = kws.split("test")
    words = meta["words"]
    assert set(words[y.numpy() == kws.CLASSES.index("yes")]) == {"yes"}
    assert set(words[y.numpy() == kws.CLASSES.index("_silence_")]) == {""}
    assert len(set(words[y.numpy() == kws.CLASSES.index("_unknown_")])) > 5


def test_realistic_tasks_are_listed_apart_from_the_small_ones():
    from edgekit.data.tasks import list_tasks

    mine = {"glyphs", "glyph_ink", "kws", "kws_sequence", "docstrings"}
    assert mine <= set(list_tasks(realistic=True)) and not mine & set(list_tasks())


def test_kws_tasks_have_image_and_sequence_layouts():
    image, seq = get_task("kws"), get_task("kws_sequence")
    assert image.test.inputs[0].shape[1:] == (1, 49, 10)
    assert seq.test.inputs[0].shape[1:] == (49, 10)
    assert image.num_classes == seq.num_classes == 12


# ----------------------------------------------------------------------------- text


def test_text_tokens_are_in_range_and_masked():
    vocab = text.vocabulary()
    assert list(vocab)[:4] == list(text.SPECIALS)
    for s in ("train", "val", "test"):
        ids, mask, y = text.split(s)
        assert ids.dtype == mask.dtype == y.dtype == torch.int64
        assert ids.shape == mask.shape and ids.shape[1] == 128
        assert int(ids.min()) >= 0 and int(ids.max()) < len(vocab)
        assert bool((ids[:, 0] == 2).all())  # [CLS]
        assert bool(((ids != 0) == (mask == 1)).all())
        assert set(y.tolist()) == set(range(8))
    ids, mask, _ = text.split("test")
    assert float((ids == 1).float().sum() / mask.sum()) < 0.15  # few unknown tokens


def test_text_splits_are_disjoint_by_source_file():
    files = {s: set(text.texts(s)[2]) for s in ("train", "val", "test")}
    assert not (files["train"] & files["test"]) and not (files["train"] & files["val"])
    counts = np.bincount(text.texts("test")[1], minlength=8)
    assert counts.max() > 2 * counts.min()  # imbalanced: macro metrics matter


def test_text_hides_the_library_names():
    for doc in text.texts("train")[0][:2000]:
        words = {w.lower().strip(".,:;()`'\"") for w in doc.split()}
        assert not words & {"numpy", "np", "torch", "sklearn", "scipy", "pandas"}, doc


def test_text_vocabulary_comes_from_the_train_split_only():
    ids, _ = text.encode("zzzqqq flurbify numbers")
    assert ids[1] == 1 and ids[2] == 1  # unseen words are [UNK]
    assert text.encode("x " * 300)[0][127] == 3  # cut to 128 with [SEP] last


# ----------------------------------------------------------------------------- metrics


def test_macro_recall_and_f1_by_hand():
    targets = np.array([0, 0, 0, 0, 1, 1, 2])
    preds = np.array([0, 0, 0, 1, 1, 0, 0])
    logits = np.eye(3)[preds]
    assert confusion_matrix(targets, preds, 3).tolist() == [[3, 1, 0], [1, 1, 0], [1, 0, 0]]
    # recalls 3/4, 1/2, 0 -> 41.67%; precisions 3/5, 1/2, 0; F1 2/3, 1/2, 0 -> 38.89%
    assert macro_recall(logits, targets) == pytest.approx(100 * (0.75 + 0.5) / 3)
    assert macro_f1(logits, targets) == pytest.approx(100 * (2 / 3 + 0.5) / 3)
    m = classification_metrics(logits, targets)
    assert m["top1"] == pytest.approx(100 * 4 / 7)


def test_mean_iou_by_hand():
    targets = np.array([[[0, 0], [1, 1]]])
    logits = np.zeros((1, 2, 2, 2))
    logits[0, 1, 0, 1] = logits[0, 1, 1, 0] = logits[0, 1, 1, 1] = 1.0  # predict 1 at 3 pixels
    # class 0: inter 1, union 2 -> 0.5; class 1: inter 2, union 3
    assert mean_iou(logits, targets) == pytest.approx(100 * (0.5 + 2 / 3) / 2)


# ----------------------------------------------------------------------------- zoo entries

REALISTIC = {"mobilenet_v2_glyphs": 45, "mobilenet_v3_glyphs": 45, "resnet18_glyphs": 45,
             "deit_tiny_glyphs": 45, "unet_glyphs": 2, "ds_cnn_kws": 12, "gru_kws": 12,
             "bert_mini_docstrings": 8}


def test_realistic_models_are_registered_apart_from_the_small_zoo():
    from edgekit.models import list_models

    assert set(REALISTIC) <= set(list_models(realistic=True))
    assert not set(REALISTIC) & set(list_models())


def test_edgekit_models_lists_the_realistic_entries(capsys):
    import json

    from edgekit.cli import main

    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(REALISTIC) <= set(rows)
    assert rows["bert_mini_docstrings"]["inputs"] == ["tokens", "mask"]
    assert rows["resnet18_glyphs"]["family"] == "realistic"


@pytest.mark.parametrize("name", sorted(REALISTIC))
def test_realistic_model_matches_its_task(name):
    from edgekit.models import build, get_spec

    torch.manual_seed(0)
    spec = get_spec(name)
    model = build(name)
    x = spec.example_inputs(2)
    with torch.no_grad():
        out = model(*x)
    assert out.shape[:2] == (2, REALISTIC[name])
    if name == "bert_mini_docstrings":
        assert x[0].shape == (2, 128) and int(x[0].max()) < len(text.vocabulary())


def test_bert_trains_on_64_tokens_and_keeps_the_logits_of_short_texts():
    from edgekit.models import build

    torch.manual_seed(0)
    model = build("bert_mini_docstrings", depth=1)
    ids, mask, _ = text.split("val")
    short = mask.sum(1) <= 64
    ids, mask = ids[short][:4], mask[short][:4]
    with torch.no_grad():
        full = model(ids, mask)
        cut = model(ids[:, :64], mask[:, :64])
    assert torch.allclose(full, cut, atol=1e-4)
    from edgekit.models import get_spec

    task = get_spec("bert_mini_docstrings").task()
    assert task.train.inputs[0].shape[1] == 64 and task.test.inputs[0].shape[1] == 128


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_small_keyword_spotter_beats_chance_on_unseen_voices(one_thread):
    from edgekit.models import build
    from edgekit.train import evaluate, fit

    torch.manual_seed(0)
    task = get_task("kws")
    model = build("ds_cnn_kws", channels=32, blocks=1)
    fit(model, task, epochs=4, lr=1e-2, batch_size=32, progress=False)
    acc = evaluate(model, task.test, task)
    assert acc > 3 * 100 / 12, acc  # chance is 8.3%


@pytest.mark.slow
def test_small_glyph_cnn_beats_chance_on_unseen_fonts(one_thread):
    from torch import nn

    from edgekit.train import evaluate, fit

    torch.manual_seed(0)
    task = get_task("glyphs")
    task.train = task.train.subset(1500)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 5, 2, 2), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, 1, 1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, 1, 1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 45))
    fit(model, task, epochs=3, batch_size=32, progress=False)
    acc = evaluate(model, task.test, task)
    assert acc > 3 * 100 / 45, acc  # chance is 2.2%


@pytest.mark.parametrize("zoo,deploy", [("resnet18_glyphs", "resnet18_224"),
                                        ("mobilenet_v2_glyphs", "mobilenet_v2_224")])
def test_glyph_weights_run_at_the_deployment_resolution(zoo, deploy):
    from edgekit.models import build
    from edgekit.models.deploy import build_deploy

    trained_at_64 = build(zoo)
    at_224 = build_deploy(deploy, num_classes=45, in_channels=1)
    at_224.load_state_dict(trained_at_64.state_dict())  # same architecture, same tensors
    with torch.no_grad():
        out = at_224(torch.rand(1, 1, 224, 224))
    assert out.shape == (1, 45) and torch.isfinite(out).all()


def test_benchmark_accuracy_rows_show_metric_macro_scores_and_failures():
    from benchmarks.deploy import accuracy_markdown, task_scores

    task = get_task("kws")
    targets = task.test.targets.numpy()
    logits = np.eye(12)[np.where(np.arange(len(targets)) % 4 == 0, 0, targets)]
    scores = task_scores(task, [logits], targets)
    assert scores["top1"] == pytest.approx(100 * np.mean(logits.argmax(1) == targets), abs=0.01)
    from sklearn.metrics import f1_score, recall_score

    pred = logits.argmax(1)
    assert scores["macro_recall"] == pytest.approx(
        100 * recall_score(targets, pred, average="macro"), abs=0.01)
    assert scores["macro_f1"] == pytest.approx(100 * f1_score(targets, pred, average="macro"),
                                               abs=0.01)
    row = {"model": "ds_cnn_kws", "task": "kws", "metric": "top1", "input": [[1, 49, 10]],
           "train_epochs": 30, "train_seconds": 76.1,
           "cells": {"pytorch/fp32": scores, "onnxruntime/int8": {"error": "BackendError: x"}}}
    text_ = "\n".join(accuracy_markdown([row]))
    assert f"| ds_cnn_kws | kws 1x49x10 | 30 ep, 76.1 s | {scores['top1']:.2f} (" in text_
    assert "failed: BackendError: x" in text_
