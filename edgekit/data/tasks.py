"""The real tasks every zoo model is trained and scored on (all deterministic, fixed seeds).

The small tasks are built from scikit-learn's digits (fixed 1078/359/360 split, see ``digits``)
and, for the audio tasks, the shipped spoken-digit features (see ``speech``). Scores are computed
from numpy, so PyTorch and every runtime are scored by the same code.

=============  ===============  ========================================  ==========  ======
task           inputs           targets                                   metric      better
=============  ===============  ========================================  ==========  ======
digits8        image 1x8x8      class 0..9                                top1 (%)    higher
digits32       image 1x32x32    class 0..9                                top1 (%)    higher
digit_rows     rows 8x8         class 0..9                                top1 (%)    higher
digit_tokens   tokens 64 int64  class 0..9                                top1 (%)    higher
image_text     image, question  1 = the answer to "is this a seven" is yes top1 (%)    higher
image_audio    image, audio     1 = the spoken digit matches the image    top1 (%)    higher
embedding      image, audio     digit label (pairs share it)              retrieval   higher
                                                                          top1 (%)
vae            image 1x8x8      the image                                 mse         lower
anomaly        image 1x8x8      1 = anomalous digit (5..9), 0 = normal    auc (0..1)  higher
gan            noise z (16)     real images of the split                  chamfer_mse lower
glyphs         image 1x64x64    character class 0..44 (22 fonts)          top1 (%)    higher
glyph_ink      image 1x64x64    per-pixel ink (1) / background (0)        mean_iou    higher
kws            mfcc 1x49x10     keyword class 0..11 (espeak-ng voices)    top1 (%)    higher
kws_sequence   mfcc 49x10       keyword class 0..11                       top1 (%)    higher
docstrings     tokens, mask     library 0..7 of a docstring sentence      top1 (%)    higher
               (128 int64)
=============  ===============  ========================================  ==========  ======

The last five are the realistic-scale tasks (``REALISTIC_TASKS``; data in ``glyphs``, ``kws``,
``text``): split by font, by voice and by source file, so test samples come from sources never
seen in training; their classifiers also report macro recall and F1 (:func:`macro_scores`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UnknownNameError
from . import digits, speech
from .task import Split, Task

SPLITS = ("train", "val", "test")
_SPLIT_SEED = {"train": 1, "val": 2, "test": 3}
TRAIN_PAIRS_PER_IMAGE = 4  # image_text: questions asked about each training image
AUDIO_TRAIN_PAIRS_PER_IMAGE = 8  # image_audio: spoken clips paired with each training image

# ----------------------------------------------------------------------------- shared helpers


def _first(outputs):
    return outputs[0] if isinstance(outputs, (tuple, list)) else outputs


def classification_loss(outputs, targets, inputs) -> torch.Tensor:
    """Cross entropy on the model's (first) output, the logits."""
    return F.cross_entropy(_first(outputs), targets)


def top1(outputs: Sequence[np.ndarray], targets: np.ndarray, inputs=None) -> float:
    """Top-1 accuracy in percent (0..100) of the (first) output's argmax."""
    logits = np.asarray(outputs[0])
    targets = np.asarray(targets).reshape(-1)
    return float(100.0 * np.mean(logits.reshape(len(targets), -1).argmax(axis=1) == targets))


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (0..1) of ``scores`` for binary ``labels`` (1 = positive).

    Computed as the Mann-Whitney U statistic with average ranks for ties: the probability that
    a random positive scores above a random negative, ties counting one half.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("auc needs at least one positive and one negative sample")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    i = 0
    while i < len(scores):  # average rank over each run of ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def chamfer_mse(generated: np.ndarray, real: np.ndarray) -> float:
    """Symmetric nearest-neighbour distance between two sets of images (lower is better).

    ``0.5 * (mean over generated of the MSE to its nearest real image
    + mean over real of the MSE to its nearest generated image)``. The first term rewards
    realistic samples, the second penalises mode collapse (real digits nobody generates).
    """
    g = np.asarray(generated, dtype=np.float64).reshape(len(generated), -1)
    r = np.asarray(real, dtype=np.float64).reshape(len(real), -1)
    d = ((g * g).sum(1)[:, None] + (r * r).sum(1)[None, :] - 2.0 * g @ r.T) / g.shape[1]
    d = np.maximum(d, 0.0)
    return float(0.5 * (d.min(axis=1).mean() + d.min(axis=0).mean()))


def retrieval_top1(a: np.ndarray, b: np.ndarray, labels: np.ndarray) -> float:
    """Percent of rows of ``a`` whose most similar row of ``b`` (dot product) has the same label."""
    sim = np.asarray(a, dtype=np.float64) @ np.asarray(b, dtype=np.float64).T
    labels = np.asarray(labels).reshape(-1)
    return float(100.0 * np.mean(labels[sim.argmax(axis=1)] == labels))


def _balanced_flags(n: int, rng: np.random.RandomState) -> np.ndarray:
    flags = np.zeros(n, dtype=np.int64)
    flags[: n // 2] = 1
    rng.shuffle(flags)
    return flags


# ----------------------------------------------------------------------------- classification

_VIEWS = {
    "digits8": (digits.images8, "8x8 digit images (N, 1, 8, 8), values in [0, 1]"),
    "digits32": (digits.images32, "digit images upsampled bilinearly to (N, 1, 32, 32)"),
    "digit_rows": (digits.rows, "digit rows as a sequence: 8 steps x 8 features"),
    "digit_tokens": (digits.tokens, "the 64 raw pixel values 0..16 as int64 tokens"),
}


def digit_classification(view: str = "digits8") -> Task:
    """Classify sklearn digits (10 classes); ``view`` picks the input representation."""
    if view not in _VIEWS:
        raise UnknownNameError("digit view", view, _VIEWS)
    fn, desc = _VIEWS[view]
    splits = {s: Split((fn(s),), digits.labels(s)) for s in SPLITS}
    return Task(
        name=view, kind="classification", metric="top1", higher_is_better=True,
        loss=classification_loss, score=top1, num_classes=10, description=desc, **splits,
    )


# ----------------------------------------------------------------------------- image + text

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEXT_VOCAB = ("<pad>", "<unk>", "is", "this", "a", "the", "digit", "number", "picture", "of",
              "it", "shown", "here") + DIGIT_WORDS
TEXT_LEN = 6
QUESTION_TEMPLATES = (
    "is this a {}",
    "is this the digit {}",
    "is this a picture of {}",
    "is the number shown {}",
    "is it a {}",
    "is the digit here a {}",
)
_WORD_ID = {w: i for i, w in enumerate(TEXT_VOCAB)}


def tokenize(text: str, length: int = TEXT_LEN) -> list[int]:
    """Lower-case, split on spaces, map to ``TEXT_VOCAB`` ids (``<unk>`` = 1), pad/cut to length."""
    ids = [_WORD_ID.get(w, 1) for w in text.lower().replace("?", " ").split()][:length]
    return ids + [0] * (length - len(ids))


def _questions(labels: np.ndarray, rng: np.random.RandomState):
    answers = _balanced_flags(len(labels), rng)
    asked = np.where(answers == 1, labels, (labels + rng.randint(1, 10, len(labels))) % 10)
    templates = rng.randint(len(QUESTION_TEMPLATES), size=len(labels))
    texts = [QUESTION_TEMPLATES[t].format(DIGIT_WORDS[a]) for t, a in zip(templates, asked)]
    ids = torch.tensor([tokenize(t) for t in texts], dtype=torch.int64)
    return ids, torch.from_numpy(answers), texts


def image_text() -> Task:
    """Visual question answering: image + "is this a seven"-style question -> yes (1) / no (0).

    Half of the questions of every split ask about the shown digit (seeded shuffle), the other
    half about a random other digit, so neither input alone beats 50%. The train split asks
    ``TRAIN_PAIRS_PER_IMAGE`` questions about each training image; val and test ask one.
    """
    splits = {}
    for s in SPLITS:
        rng = np.random.RandomState(_SPLIT_SEED[s])
        reps = TRAIN_PAIRS_PER_IMAGE if s == "train" else 1
        labels = np.tile(digits.labels(s).numpy(), reps)
        ids, answers, _ = _questions(labels, rng)
        splits[s] = Split((digits.images8(s).repeat(reps, 1, 1, 1), ids), answers)
    return Task(
        name="image_text", kind="classification", metric="top1", higher_is_better=True,
        loss=classification_loss, score=top1, num_classes=2,
        description="answer yes/no to a question about a digit image", **splits,
    )


# ----------------------------------------------------------------------------- image + audio


def _audio_for(digit_labels: np.ndarray, split: str, rng: np.random.RandomState) -> torch.Tensor:
    """One spoken clip (from the same split of the speech set) for each requested digit."""
    feats, labels = speech.split(split)
    labels = labels.numpy()
    by_digit = [np.flatnonzero(labels == k) for k in range(10)]
    pick = np.array([by_digit[d][rng.randint(len(by_digit[d]))] for d in digit_labels])
    return feats[torch.from_numpy(pick)]


def image_audio() -> Task:
    """Does the spoken digit match the digit image? 1 = match (half of every split), 0 = not.

    Clips come from the same split of the speech set (test voices are never trained on). The
    train split pairs each image with ``AUDIO_TRAIN_PAIRS_PER_IMAGE`` clips; val and test with
    one.
    """
    splits = {}
    for s in SPLITS:
        rng = np.random.RandomState(10 + _SPLIT_SEED[s])
        reps = AUDIO_TRAIN_PAIRS_PER_IMAGE if s == "train" else 1
        labels = np.tile(digits.labels(s).numpy(), reps)
        match = _balanced_flags(len(labels), rng)
        spoken = np.where(match == 1, labels, (labels + rng.randint(1, 10, len(labels))) % 10)
        images = digits.images8(s).repeat(reps, 1, 1, 1)
        splits[s] = Split((images, _audio_for(spoken, s, rng)), torch.from_numpy(match))
    return Task(
        name="image_audio", kind="classification", metric="top1", higher_is_better=True,
        loss=classification_loss, score=top1, num_classes=2,
        description="does the spoken digit (log-mel features) match the digit image", **splits,
    )


# ----------------------------------------------------------------------------- joint embedding

EMBED_TEMPERATURE = 0.1


def contrastive_loss(outputs, targets, inputs, temperature: float = EMBED_TEMPERATURE):
    """CLIP-style symmetric cross entropy on the image x audio similarity matrix.

    Pairs in a batch that show the same digit all count as positives (a soft target spread
    evenly over them), so repeated digits are not pushed apart.
    """
    a, b = outputs[0], outputs[1]
    logits = a @ b.T / temperature
    same = (targets[:, None] == targets[None, :]).float()
    soft = same / same.sum(dim=1, keepdim=True)
    return 0.5 * (
        torch.sum(-soft * F.log_softmax(logits, dim=1), dim=1).mean()
        + torch.sum(-soft * F.log_softmax(logits.T, dim=1), dim=1).mean()
    )


def embedding_score(outputs, targets, inputs=None) -> float:
    """Image -> audio retrieval top-1 (%): the nearest audio embedding speaks the image's digit."""
    return retrieval_top1(outputs[0], outputs[1], targets)


def embedding() -> Task:
    """Map digit images and spoken digits into one embedding space (pairs share the digit)."""
    splits = {}
    for s in SPLITS:
        labels = digits.labels(s)
        audio = _audio_for(labels.numpy(), s, np.random.RandomState(20 + _SPLIT_SEED[s]))
        splits[s] = Split((digits.images8(s), audio), labels)
    return Task(
        name="embedding", kind="embedding", metric="retrieval_top1", higher_is_better=True,
        loss=contrastive_loss, score=embedding_score, num_classes=10,
        description="joint image/speech embedding; scored by image->audio retrieval", **splits,
    )


# ----------------------------------------------------------------------------- generative

VAE_BETA = 0.05


def vae_loss(outputs, targets, inputs, beta: float = VAE_BETA) -> torch.Tensor:
    """Per-pixel MSE reconstruction + beta * KL(q(z|x) || N(0, I)) per sample / 64 pixels."""
    recon, mu, logvar = outputs[0], outputs[1], outputs[2]
    rec = F.mse_loss(recon, targets)
    kl = -0.5 * torch.mean(torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)) / 64.0
    return rec + beta * kl


def mse_score(outputs, targets, inputs=None) -> float:
    """Mean squared error between the (first) output and the targets, over every element."""
    out = np.asarray(outputs[0], dtype=np.float64)
    return float(np.mean((out.reshape(targets.shape) - np.asarray(targets, np.float64)) ** 2))


def vae() -> Task:
    """Reconstruct digit images through a variational bottleneck (metric: test MSE)."""
    splits = {s: Split((digits.images8(s),), digits.images8(s)) for s in SPLITS}
    return Task(
        name="vae", kind="reconstruction", metric="mse", higher_is_better=False,
        loss=vae_loss, score=mse_score, description="reconstruct 8x8 digit images", **splits,
    )


NORMAL_DIGITS = (0, 1, 2, 3, 4)


def reconstruction_loss(outputs, targets, inputs) -> torch.Tensor:
    """MSE between the (first) output, the reconstruction, and the model's first input."""
    return F.mse_loss(_first(outputs), inputs[0])


def anomaly_score(outputs, targets, inputs=None) -> float:
    """AUC (0..1) of the model's second output, the per-sample anomaly score."""
    return auc(outputs[1], targets)


def anomaly() -> Task:
    """Anomaly detection: learn digits 0-4 ("normal") only; flag 5-9 by reconstruction error.

    The train split holds only normal digits; val and test hold all digits of their split,
    target 1 = anomalous (5..9), 0 = normal.
    """
    splits = {}
    for s in SPLITS:
        x, y = digits.images8(s), digits.labels(s)
        anomalous = (~torch.isin(y, torch.tensor(NORMAL_DIGITS))).long()
        if s == "train":
            keep = anomalous == 0
            x, anomalous = x[keep], anomalous[keep]
        splits[s] = Split((x,), anomalous)
    return Task(
        name="anomaly", kind="anomaly", metric="auc", higher_is_better=True,
        loss=reconstruction_loss, score=anomaly_score,
        description="flag digits 5-9 after training on digits 0-4 only", **splits,
    )


Z_DIM = 16


def mmd_loss(outputs, targets, inputs) -> torch.Tensor:
    """Maximum mean discrepancy (Gaussian kernels) between a generated and a real batch.

    A discriminator-free generator objective (generative moment matching), used when the GAN
    is trained by the generic loop; the zoo's GAN ``fit`` hook trains adversarially instead.
    """
    g = _first(outputs).flatten(1)
    r = targets.flatten(1)
    x = torch.cat([g, r])
    d = torch.cdist(x, x).pow(2) / g.shape[1]
    k = sum(torch.exp(-d / s) for s in (0.01, 0.03, 0.1, 0.3))
    n = len(g)
    return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()


def gan_score(outputs, targets, inputs=None) -> float:
    """Chamfer MSE between the generated images and the split's real images (lower better)."""
    return chamfer_mse(outputs[0], targets)


def gan() -> Task:
    """Generate digits from noise. Each split's inputs are fixed seeded noise vectors (N, 16)."""
    splits = {}
    for s in SPLITS:
        g = torch.Generator().manual_seed(100 + _SPLIT_SEED[s])
        real = digits.images8(s)
        splits[s] = Split((torch.randn(len(real), Z_DIM, generator=g),), real)
    return Task(
        name="gan", kind="generation", metric="chamfer_mse", higher_is_better=False,
        loss=mmd_loss, score=gan_score,
        description="generate 8x8 digits; scored by chamfer distance to the real split", **splits,
    )


# ----------------------------------------------------------------------------- realistic scale


def macro_scores(outputs, targets, inputs=None) -> dict[str, float]:
    """Top-1, macro recall and macro F1 (%) of the (first) output's argmax: what the
    realistic-scale classification tasks report (see ``edgekit.measure.metrics``)."""
    from ..measure.metrics import classification_metrics

    return classification_metrics(outputs[0], targets)


def glyphs_task() -> Task:
    """45 glyph classes rendered from 22 fonts, split by font (see ``glyphs``): 64x64, 1 channel."""
    from . import glyphs

    splits = {s: Split((glyphs.images(s),), glyphs.labels(s)) for s in SPLITS}
    return Task(
        name="glyphs", kind="classification", metric="top1", higher_is_better=True,
        loss=classification_loss, score=top1, num_classes=len(glyphs.CLASSES),
        description="recognise 45 characters in fonts never seen in training (64x64 grey)",
        **splits,
    )


SEGMENTATION_TRAIN = 2000  # glyph_ink trains on the first 2000 train images (memory)


def segmentation_loss(outputs, targets, inputs) -> torch.Tensor:
    """Per-pixel cross entropy of (N, C, H, W) logits against (N, H, W) class maps."""
    return F.cross_entropy(_first(outputs), targets.long())


def iou_score(outputs, targets, inputs=None) -> float:
    """Mean IoU (%) over the classes of per-pixel argmax (see ``measure.metrics.mean_iou``)."""
    from ..measure.metrics import mean_iou

    return mean_iou(outputs[0], targets)


def glyph_ink() -> Task:
    """Segment a glyph's ink (1) from its background (0) under blur, gradients and noise."""
    from . import glyphs

    splits = {}
    for s in SPLITS:
        x, m = glyphs.images(s), glyphs.ink_masks(s)
        if s == "train":
            x, m = x[:SEGMENTATION_TRAIN], m[:SEGMENTATION_TRAIN]
        splits[s] = Split((x,), m)
    return Task(
        name="glyph_ink", kind="segmentation", metric="mean_iou", higher_is_better=True,
        loss=segmentation_loss, score=iou_score, num_classes=2,
        description="per-pixel ink/background of noisy 64x64 glyphs in unseen fonts", **splits,
    )


def kws_task(layout: str = "image") -> Task:
    """Keyword spotting, 12 classes, 49x10 MFCC (see ``kws``); unseen voices in val and test.

    ``layout="image"``: (N, 1, 49, 10) for convolutional spotters; ``"sequence"``: (N, 49, 10)
    (frames x coefficients) for recurrent ones.
    """
    from . import kws

    if layout not in ("image", "sequence"):
        raise UnknownNameError("keyword-spotting layout", layout, ("image", "sequence"))
    splits = {}
    for s in SPLITS:
        x, y = kws.split(s)
        splits[s] = Split((x[:, None] if layout == "image" else x,), y)
    return Task(
        name="kws" if layout == "image" else "kws_sequence", kind="classification",
        metric="top1", higher_is_better=True, loss=classification_loss, score=top1,
        num_classes=len(kws.CLASSES),
        description="12-class keyword spotting (MLPerf Tiny shape) on espeak-ng voices",
        **splits,
    )


def text_task(seq_len: int = 128, train_len: int | None = None) -> Task:
    """Which of 8 libraries wrote a docstring sentence (see ``text``): token ids + mask.

    ``train_len`` cuts the train split shorter than ``seq_len`` (cheaper training; with the
    padding masked out, an encoder gives a text that fits the same logits at either length).
    """
    from . import text

    splits = {}
    for s in SPLITS:
        ids, mask, y = text.split(s, train_len if (s == "train" and train_len) else seq_len)
        splits[s] = Split((ids, mask), y)
    return Task(
        name="docstrings", kind="classification", metric="top1", higher_is_better=True,
        loss=classification_loss, score=top1, num_classes=len(text.libraries()),
        description=f"classify docstring sentences by library ({seq_len} tokens)", **splits,
    )


# ----------------------------------------------------------------------------- lookup

TASKS = {
    "digits8": functools.partial(digit_classification, "digits8"),
    "digits32": functools.partial(digit_classification, "digits32"),
    "digit_rows": functools.partial(digit_classification, "digit_rows"),
    "digit_tokens": functools.partial(digit_classification, "digit_tokens"),
    "image_text": image_text,
    "image_audio": image_audio,
    "embedding": embedding,
    "vae": vae,
    "anomaly": anomaly,
    "gan": gan,
}

#: the realistic-scale tasks (thousands of samples, seconds to build): found by ``get_task``,
#: listed by ``list_tasks(realistic=True)``
REALISTIC_TASKS = {
    "glyphs": glyphs_task,
    "glyph_ink": glyph_ink,
    "kws": kws_task,
    "kws_sequence": functools.partial(kws_task, "sequence"),
    "docstrings": text_task,
}


def get_task(name: str) -> Task:
    """Build the named task (see ``TASKS`` and ``REALISTIC_TASKS``)."""
    every = {**TASKS, **REALISTIC_TASKS}
    if name not in every:
        raise UnknownNameError("task", name, every)
    return every[name]()


def list_tasks(*, realistic: bool = False) -> list[str]:
    """The small tasks' names, sorted; with ``realistic=True`` the realistic-scale ones too."""
    return sorted({**TASKS, **REALISTIC_TASKS} if realistic else TASKS)
