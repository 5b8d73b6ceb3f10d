"""edgekit.data: the digits split, the tasks, their scores and the user-data loaders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgekit.data import digits, speech, tasks
from edgekit.data.loaders import load_image_folder, load_npz
from edgekit.errors import DataError, UnknownNameError

# ----------------------------------------------------------------------------- digits split


def test_split_sizes_and_baseline_order():
    idx = digits.split_indices()
    assert [len(idx[s]) for s in ("train", "val", "test")] == [1078, 359, 360]
    perm = np.random.RandomState(0).permutation(1797)
    np.testing.assert_array_equal(idx["train"], perm[:1078])
    np.testing.assert_array_equal(idx["val"], perm[1078:1437])
    np.testing.assert_array_equal(idx["test"], perm[1437:])
    assert len(set(np.concatenate(list(idx.values())).tolist())) == 1797


def test_views_shapes_dtypes_and_ranges():
    x8 = digits.images8("train")
    assert x8.shape == (1078, 1, 8, 8) and x8.dtype == torch.float32
    assert float(x8.min()) == 0.0 and float(x8.max()) == 1.0
    x32 = digits.images32("val")
    assert x32.shape == (359, 1, 32, 32) and x32.dtype == torch.float32
    assert 0.0 <= float(x32.min()) and float(x32.max()) <= 1.0
    rows = digits.rows("test")
    assert rows.shape == (360, 8, 8)
    torch.testing.assert_close(rows, digits.images8("test")[:, 0])
    tok = digits.tokens("test")
    assert tok.shape == (360, 64) and tok.dtype == torch.int64
    assert int(tok.min()) == 0 and int(tok.max()) == 16
    torch.testing.assert_close(tok.float() / 16, digits.images8("test").reshape(360, 64))
    y = digits.labels("train")
    assert y.dtype == torch.int64 and set(y.tolist()) == set(range(10))


def test_upsampling_is_bilinear_and_keeps_constant_images():
    const = torch.full((1, 1, 8, 8), 0.25)
    torch.testing.assert_close(digits.upsample(const), torch.full((1, 1, 32, 32), 0.25))
    x = digits.images8("test")[:3]
    ref = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(digits.images32("test")[:3], ref)


def test_unknown_split_and_task_names():
    with pytest.raises(Exception, match="unknown split"):
        digits.images8("training")
    with pytest.raises(UnknownNameError, match="image_txt"):
        tasks.get_task("image_txt")


@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_every_task_is_deterministic_and_consistent(name):
    a, b = tasks.get_task(name), tasks.get_task(name)
    assert a.name and a.metric and a.kind in {
        "classification", "reconstruction", "anomaly", "embedding", "generation"}
    for split in ("train", "val", "test"):
        sa, sb = getattr(a, split), getattr(b, split)
        assert len(sa) > 0
        for ta, tb in zip(sa.inputs, sb.inputs):
            assert ta.shape[0] == len(sa)
            assert torch.equal(ta, tb)
        assert torch.equal(sa.targets, sb.targets)
    assert len(a.val) == 359 and len(a.test) == 360


@pytest.mark.parametrize("name", ["image_text", "image_audio"])
def test_pair_tasks_are_balanced(name):
    task = tasks.get_task(name)
    for split in (task.train, task.val, task.test):
        assert abs(float(split.targets.float().mean()) - 0.5) <= 1 / len(split)
        assert set(split.targets.tolist()) == {0, 1}


def test_image_text_questions_match_answers():
    task = tasks.get_task("image_text")
    words = {tasks.TEXT_VOCAB.index(w): d for d, w in enumerate(tasks.DIGIT_WORDS)}
    labels = digits.labels("test")
    ids, answers = task.test.inputs[1], task.test.targets
    assert ids.shape == (360, tasks.TEXT_LEN) and ids.dtype == torch.int64
    for row, y, ans in zip(ids.tolist(), labels.tolist(), answers.tolist()):
        asked = [words[i] for i in row if i in words]
        assert len(asked) == 1
        assert (asked[0] == y) == bool(ans)


def test_tokenize():
    assert tasks.tokenize("Is this a seven?") == [2, 3, 4, tasks.TEXT_VOCAB.index("seven"), 0, 0]
    assert tasks.tokenize("is this a banana")[3] == 1  # <unk>
    assert len(tasks.tokenize("is " * 20)) == tasks.TEXT_LEN


def test_audio_tasks_use_matching_spoken_digits():
    feats, labels = speech.split("test")
    task = tasks.get_task("embedding")
    audio = task.test.inputs[1]
    # every test clip is a real test clip of the image's digit
    for clip, y in zip(audio[:50], task.test.targets[:50].tolist()):
        hit = (feats == clip).all(dim=(1, 2)).nonzero().flatten()
        assert len(hit) >= 1 and int(labels[hit[0]]) == y


def test_speech_features_file():
    counts = {}
    for s in ("train", "val", "test"):
        f, y = speech.split(s)
        assert f.shape[1:] == (speech.FRAMES, speech.MELS) and f.dtype == torch.float32
        assert torch.isfinite(f).all()
        assert torch.bincount(y, minlength=10).tolist() == [len(y) // 10] * 10
        counts[s] = len(y)
    assert counts["train"] > counts["val"] > 0 and counts["test"] > 0
    assert speech.FEATURES_PATH.stat().st_size < 1_000_000


def test_anomaly_task_trains_on_normal_digits_only():
    task = tasks.get_task("anomaly")
    assert task.train.targets.sum() == 0
    labels = digits.labels("test")
    expected = (labels >= 5).long()
    assert torch.equal(task.test.targets, expected)


# ----------------------------------------------------------------------------- scores


def test_auc_hand_computed():
    assert tasks.auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert tasks.auc([1, 2, 3, 4], [0, 0, 1, 1]) == 1.0
    assert tasks.auc([4, 3, 2, 1], [0, 0, 1, 1]) == 0.0
    assert tasks.auc([0.5, 0.5, 0.5], [0, 1, 1]) == 0.5  # ties count one half
    with pytest.raises(ValueError):
        tasks.auc([0.1, 0.2], [1, 1])


def test_auc_matches_sklearn_on_random_data():
    from sklearn.metrics import roc_auc_score

    rng = np.random.RandomState(0)
    s = rng.randint(0, 5, 200).astype(float)  # many ties
    y = rng.randint(0, 2, 200)
    assert tasks.auc(s, y) == pytest.approx(roc_auc_score(y, s))


def test_top1_score():
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 5.0, 0.0], [0.0, 1.0, 0.0]])
    assert tasks.top1([logits], np.array([0, 2, 1, 2])) == pytest.approx(75.0)


def test_chamfer_mse():
    real = np.array([[0.0, 0.0], [1.0, 1.0]])
    assert tasks.chamfer_mse(real, real) == 0.0
    # both generated samples sit on real[0]: generated->real 0, real[1]->nearest = mse 1.0
    gen = np.array([[0.0, 0.0], [0.0, 0.0]])
    assert tasks.chamfer_mse(gen, real) == pytest.approx(0.5 * (0.0 + 0.5 * 1.0))


def test_retrieval_top1():
    a = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    b = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert tasks.retrieval_top1(a, b, np.array([0, 1, 1])) == pytest.approx(100 * 2 / 3)


def test_task_scores_on_perfect_outputs():
    t = tasks.get_task("digits8")
    onehot = np.eye(10)[t.test.targets.numpy()]
    assert t.score([onehot], t.test.targets.numpy(), []) == 100.0
    v = tasks.get_task("vae")
    x = v.test.targets.numpy()
    assert v.score([x, None, None], x, [x]) == 0.0
    assert v.score([np.zeros_like(x)], x, [x]) == pytest.approx(float((x**2).mean()))
    a = tasks.get_task("anomaly")
    y = a.test.targets.numpy()
    assert a.score([None, y.astype(float)], y, []) == 1.0
    assert a.score([None, -y.astype(float)], y, []) == 0.0
    g = tasks.get_task("gan")
    assert g.score([g.test.targets.numpy()], g.test.targets.numpy(), []) == 0.0
    e = tasks.get_task("embedding")
    lab = e.test.targets.numpy()
    emb = np.eye(10)[lab]
    assert e.score([emb, emb], lab, []) == 100.0


def test_losses_are_differentiable_scalars():
    torch.manual_seed(0)
    v = tasks.get_task("vae")
    x = v.train.targets[:8]
    recon = torch.rand_like(x, requires_grad=True)
    mu, logvar = torch.zeros(8, 4), torch.zeros(8, 4)
    assert tasks.vae_loss((recon, mu, logvar), x, (x,)).ndim == 0
    # a perfect reconstruction with a standard-normal posterior costs nothing
    assert float(tasks.vae_loss((x, mu, logvar), x, (x,))) == pytest.approx(0.0, abs=1e-7)
    labels = torch.tensor([0, 1, 0, 2])
    emb = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    assert float(tasks.contrastive_loss((emb, emb), labels, ())) > 0
    g = tasks.get_task("gan")
    real = g.train.targets[:16]
    assert float(tasks.mmd_loss(real, real, ())) == pytest.approx(0.0, abs=1e-6)
    assert float(tasks.mmd_loss(torch.zeros_like(real), real, ())) > 0.01


# ----------------------------------------------------------------------------- loaders


def test_load_npz_roundtrip(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x=np.random.rand(5, 3).astype(np.float64), t=np.arange(5, dtype=np.int32),
             y=np.arange(5))
    split = load_npz(p)
    assert len(split) == 5 and split.inputs[0].dtype == torch.float32
    assert split.targets.dtype == torch.int64
    two = load_npz(p, input_keys=("x", "t"), target_key="y")
    assert [t.dtype for t in two.inputs] == [torch.float32, torch.int64]


def test_load_npz_errors(tmp_path):
    with pytest.raises(DataError, match="missing.npz"):
        load_npz(tmp_path / "missing.npz")
    p = tmp_path / "d.npz"
    np.savez(p, images=np.zeros((4, 2)), labels=np.zeros(4))
    with pytest.raises(DataError, match="'x'.*keys present: 'images', 'labels'") as err:
        load_npz(p)
    assert "d.npz" in str(err.value)
    q = tmp_path / "bad_count.npz"
    np.savez(q, x=np.zeros((4, 2)), y=np.zeros(3))
    with pytest.raises(DataError, match=r"bad_count\.npz.*x \(4, 2\), y \(3,\)"):
        load_npz(q)
    r = tmp_path / "garbage.npz"
    r.write_bytes(b"not a zip file")
    with pytest.raises(DataError, match="garbage.npz"):
        load_npz(r)
    s = tmp_path / "strings.npz"
    np.savez(s, x=np.array(["a", "b"]), y=np.zeros(2))
    with pytest.raises(DataError, match="strings.npz key 'x'"):
        load_npz(s)


def _write_png(path, value, size=(5, 7), mode="L"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0]) + ((3,) if mode == "RGB" else ()), value, dtype=np.uint8)
    Image.fromarray(arr, mode=mode).save(path)


def test_load_image_folder(tmp_path):
    _write_png(tmp_path / "dog" / "a.png", 255)
    _write_png(tmp_path / "cat" / "b.png", 0, mode="RGB")
    _write_png(tmp_path / "cat" / "c.png", 51)
    (tmp_path / "cat" / "notes.txt").write_text("ignored")
    split, classes = load_image_folder(tmp_path, size=(4, 6))
    assert classes == ["cat", "dog"]
    assert split.inputs[0].shape == (3, 1, 4, 6)
    assert split.targets.tolist() == [0, 0, 1]
    assert split.inputs[0][1].mean().item() == pytest.approx(0.2, abs=1e-6)
    assert split.inputs[0][2].min().item() == 1.0
    rgb, _ = load_image_folder(tmp_path, size=(8, 8), grayscale=False)
    assert rgb.inputs[0].shape == (3, 3, 8, 8)


def test_load_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        load_image_folder(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="empty has no class subfolders"):
        load_image_folder(empty)
    (tmp_path / "one" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="cls holds no images"):
        load_image_folder(tmp_path / "one")
    bad = tmp_path / "bad"
    _write_png(bad / "a" / "ok.png", 10)
    (bad / "a" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.png"):
        load_image_folder(bad)
