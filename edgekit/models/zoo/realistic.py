"""The deployment-scale architectures (``edgekit.models.deploy``) trained on the realistic tasks.

Each entry is the published architecture with its input stem and head sized for its task; it
trains at the task's own size, which two CPU cores allow (``default_epochs``; Adam with cosine
decay unless the entry's ``TRAIN_RECIPE`` says otherwise: the MobileNets recompute their
batch-norm statistics after every epoch, the DeiT trains with AdamW and a warm-up, see
``_MOBILENET_RECIPE`` and ``_DEIT_RECIPE``), and the same architecture is timed at its
standard shape by ``benchmarks/deploy.py``, which also scores these trained models fp32 and
int8 on every runtime:

=========================  ===================  ==================  ===========  ======
zoo name                   architecture         task (train size)   timed at     epochs
=========================  ===================  ==================  ===========  ======
``mobilenet_v2_glyphs``    MobileNetV2-1.0      glyphs 1x64x64      3x224x224    8
``mobilenet_v3_glyphs``    MobileNetV3-Large    glyphs 1x64x64      3x224x224    8
``resnet18_glyphs``        ResNet-18            glyphs 1x64x64      3x224x224    1
``deit_tiny_glyphs``       DeiT-tiny, patch 16  glyphs 1x64x64      3x224x224    10
``unet_glyphs``            U-Net, 4 levels      glyph_ink 1x64x64   3x128x128    1
``ds_cnn_kws``             MLPerf Tiny DS-CNN   kws 1x49x10         1x1x49x10    30
``gru_kws``                2-layer GRU (128)    kws 49x10           1x49x10      30
``bert_mini_docstrings``   BERT-mini (4 x 256)  docstrings 128      2 x 128      2
=========================  ===================  ==================  ===========  ======

The CNNs end in global pooling, so the weights trained at 64x64 run unchanged at 224x224; the
DeiT's position embeddings are sized for its 4x4 patch grid at 64x64. The BERT encoder trains
on the first 64 tokens of each text (98% of the texts fit; padding is masked out, so a text
that fits gives the same logits at 64 and at 128 tokens) and is evaluated at 128. Batch norms
use momentum 0.1 (MobileNetV3's published 0.01 leaves the running statistics at their initial
values after a short run). These entries are listed by ``list_models(realistic=True)`` (and
``edgekit models``), not by the plain ``list_models()`` the small-zoo suites iterate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ...data import tasks
from ..registry import ModelSpec, register
from ._common import gen
from .edge import MobileNetV2

if TYPE_CHECKING:
    from types import ModuleType



def _deploy() -> ModuleType:
    # imported when a model is built: edgekit.models.deploy imports this package's edge module
    from .. import deploy

    return deploy


GLYPH_CLASSES = 45
KWS_CLASSES = 12
TEXT_CLASSES = 8
GLYPH_SIZE = 64
TEXT_TRAIN_TOKENS = 64


def _with_lr(model: nn.Module, lr: float) -> nn.Module:
    tagged: Any = model
    tagged.DEFAULT_LR = lr  # read by edgekit.train.fit
    return model


def _bn_momentum(model: nn.Module, momentum: float = 0.1) -> nn.Module:
    """Batch-norm running statistics that follow a short training run (see the module notes)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = momentum
    return model


def _make(name: str, build, lr: float, recipe: dict[str, Any] | None = None):
    def factory(**kwargs: Any) -> nn.Module:
        model: Any = _with_lr(_bn_momentum(build(**kwargs)), lr)
        if recipe:
            model.TRAIN_RECIPE = dict(recipe)  # read by edgekit.train.fit (training_recipe)
        model.edgekit_name = name
        return model.eval()

    factory.__name__ = name
    return factory


def _glyph_images(batch: int) -> tuple[torch.Tensor, ...]:
    return (torch.rand(batch, 1, GLYPH_SIZE, GLYPH_SIZE, generator=gen(0)),)


def _mfcc_image(batch: int) -> tuple[torch.Tensor, ...]:
    return (torch.randn(batch, 1, 49, 10, generator=gen(0)),)


def _mfcc_sequence(batch: int) -> tuple[torch.Tensor, ...]:
    return (torch.randn(batch, 49, 10, generator=gen(0)),)


def _vocab_size() -> int:
    from ...data import text

    return len(text.vocabulary())


def _tokens(batch: int) -> tuple[torch.Tensor, ...]:
    from ...data import text

    return (torch.randint(4, _vocab_size(), (batch, text.SEQ_LEN), generator=gen(0)),
            torch.ones(batch, text.SEQ_LEN, dtype=torch.int64))


def _glyph_spec(name: str, description: str, build: Any, lr: float, epochs: int,
                tags: tuple[str, ...] = ("classification", "vision", "realistic"),
                recipe: dict[str, Any] | None = None) -> ModelSpec:
    return ModelSpec(name=name, family="realistic", description=description,
                     factory=_make(name, build, lr, recipe), task=tasks.glyphs_task,
                     input_names=("image",), output_names=("logits",),
                     example_inputs=_glyph_images, default_epochs=epochs, tags=tags)


#: MobileNets: batch 32 (twice the updates of the default 64 per epoch at the same cost), a
#: short warm-up, and batch-norm statistics recomputed after every epoch (``edgekit.train``:
#: their momentum averages lag so far behind the fast-moving weights of a short run that the
#: eval-mode model scores near chance while the train-mode one fits its batches).
_MOBILENET_RECIPE: dict[str, Any] = {"optimizer": "adam", "lr": 1e-3, "batch_size": 32,
                                     "warmup": 0.05, "bn_recalibration": 1024}
#: DeiT from scratch: AdamW with decoupled weight decay (not on biases and norms), a 10%
#: linear warm-up to 5e-4 then cosine decay, batch 32 (DeiT's own recipe, scaled down).
_DEIT_RECIPE: dict[str, Any] = {"optimizer": "adamw", "lr": 5e-4, "weight_decay": 0.05,
                                "batch_size": 32, "warmup": 0.1}

SPECS: dict[str, ModelSpec] = {}
for _spec in (
    _glyph_spec(
        "mobilenet_v2_glyphs", "MobileNetV2-1.0 on 64x64 glyphs in unseen fonts (45 classes)",
        lambda **kw: MobileNetV2(**{"num_classes": GLYPH_CLASSES, "width_mult": 1.0,
                                    "in_channels": 1, "stem_stride": 2, **kw}), 1e-3, 8,
        recipe=_MOBILENET_RECIPE),
    _glyph_spec(
        "mobilenet_v3_glyphs", "MobileNetV3-Large (hard-swish, squeeze-excite) on 64x64 glyphs",
        lambda **kw: _deploy().MobileNetV3Large(
            **{"num_classes": GLYPH_CLASSES, "in_channels": 1, **kw}), 3e-3, 8,
        recipe={**_MOBILENET_RECIPE, "lr": 3e-3}),
    _glyph_spec(
        "resnet18_glyphs", "ResNet-18 on 64x64 glyphs in unseen fonts (45 classes)",
        lambda **kw: _deploy().ResNet(
            _deploy().BasicBlock, (2, 2, 2, 2),
            **{"num_classes": GLYPH_CLASSES, "in_channels": 1, **kw}), 1e-3, 1),
    _glyph_spec(
        "deit_tiny_glyphs", "DeiT-tiny (patch 16, 12 x 192) on 64x64 glyphs",
        lambda **kw: _deploy().VisionTransformer(
            **{"img_size": GLYPH_SIZE, "in_channels": 1, "num_classes": GLYPH_CLASSES, **kw}),
        1e-4, 10,
        ("classification", "vision", "attention", "realistic"), recipe=_DEIT_RECIPE),
    ModelSpec(
        name="unet_glyphs", family="realistic",
        description="U-Net (4 levels, skip concatenations) segmenting glyph ink at 64x64",
        factory=_make("unet_glyphs", lambda **kw: _deploy().UNet(**{
            "num_classes": 2, "in_channels": 1, "base": 16, **kw}), 3e-3),
        task=tasks.glyph_ink, input_names=("image",), output_names=("logits",),
        example_inputs=_glyph_images, default_epochs=1,
        tags=("segmentation", "vision", "realistic")),
    ModelSpec(
        name="ds_cnn_kws", family="realistic",
        description="MLPerf Tiny DS-CNN keyword spotter, 49x10 MFCC, 12 classes",
        factory=_make("ds_cnn_kws", lambda **kw: _deploy().KwsDSCNN(**{
            "num_classes": KWS_CLASSES, **kw}), 3e-3),
        task=tasks.kws_task, input_names=("mfcc",), output_names=("logits",),
        example_inputs=_mfcc_image, default_epochs=30,
        tags=("classification", "audio", "realistic")),
    ModelSpec(
        name="gru_kws", family="realistic",
        description="2-layer GRU keyword spotter, 49x10 MFCC, 12 classes",
        factory=_make("gru_kws", lambda **kw: _deploy().GRUSpotter(**{
            "num_classes": KWS_CLASSES, **kw}), 3e-3),
        task=lambda: tasks.kws_task("sequence"), input_names=("mfcc",),
        output_names=("logits",), example_inputs=_mfcc_sequence, default_epochs=30,
        tags=("classification", "audio", "sequence", "realistic")),
    ModelSpec(
        name="bert_mini_docstrings", family="realistic",
        description="BERT-mini encoder (4 x 256, 128 tokens) classifying docstrings by library",
        factory=_make("bert_mini_docstrings", lambda **kw: _deploy().BertEncoderClassifier(**{
            "vocab": _vocab_size(), "num_classes": TEXT_CLASSES, **kw}), 4e-4),
        task=lambda: tasks.text_task(train_len=TEXT_TRAIN_TOKENS), input_names=("tokens", "mask"),
        output_names=("logits",), example_inputs=_tokens, default_epochs=2,
        tags=("classification", "text", "attention", "realistic")),
):
    SPECS[_spec.name] = register(_spec)
