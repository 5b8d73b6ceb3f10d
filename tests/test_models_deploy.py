"""Architectures at deployment shapes: published parameter counts, fp32 export verified on every
runtime (at a reduced resolution where the architecture allows, to keep the suite short)."""

from __future__ import annotations

import pytest
import torch

from edgekit.models.deploy import DEPLOY_SHAPES, build_deploy, deploy_inputs, deploy_models

# parameter counts of the reference implementations (torchvision 0.2x, timm's deit_tiny,
# Hugging Face's BertModel for google/bert_uncased_L-4_H-256_A-4 + a 2-class head)
PUBLISHED = {
    "mobilenet_v2_224": 3_504_872,
    "resnet18_224": 11_689_512,
    "resnet50_224": 25_557_032,
    "mobilenet_v3_large_224": 5_483_032,
    "deit_tiny_224": 5_717_416,
    "bert_mini_128": 11_170_560 + 256 * 2 + 2,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_match_the_reference(name):
    model = build_deploy(name)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED[name]


@pytest.mark.parametrize("name", deploy_models())
def test_standard_shape_runs(name):
    model = build_deploy(name)
    inputs = deploy_inputs(name)
    assert [tuple(x.shape) for x in inputs] == [s for s, _ in DEPLOY_SHAPES[name]]
    with torch.no_grad():
        out = model(*inputs)
    assert torch.isfinite(out).all()
    if name == "unet_128":
        assert out.shape == (1, 2, 128, 128)


def test_unet_reuses_one_pool_module():
    model = build_deploy("unet_128")
    calls = []
    model.pool.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        model(*deploy_inputs("unet_128"))
    assert len(calls) == 4


# small but same-architecture variants for export: (kwargs, inputs)
SMALL = {
    "mobilenet_v2_224": ({}, (torch.rand(1, 3, 64, 64),)),
    "resnet18_224": ({}, (torch.rand(1, 3, 64, 64),)),
    "mobilenet_v3_large_224": ({}, (torch.rand(1, 3, 64, 64),)),
    "deit_tiny_224": ({"img_size": 64, "depth": 2}, (torch.rand(1, 3, 64, 64),)),
    "bert_mini_128": ({"vocab": 1000, "depth": 2},
                      (torch.randint(0, 1000, (1, 32)), torch.ones(1, 32, dtype=torch.int64))),
    "ds_cnn_kws": ({}, (torch.rand(1, 1, 49, 10),)),
    "gru_kws": ({}, (torch.rand(1, 49, 10),)),
    "unet_128": ({"base": 8}, (torch.rand(1, 3, 64, 64),)),
}
FP32 = ["x86-onnxruntime-fp32", "x86-openvino-fp32", "x86-tflite-fp32"]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SMALL))
def test_fp32_exports_and_verifies_on_every_runtime(name, tmp_path):
    from edgekit.pipeline import compress

    kwargs, inputs = SMALL[name]
    torch.manual_seed(0)
    model = build_deploy(name, **kwargs)
    bundle = compress(model, inputs, targets=FP32, out_dir=tmp_path / name, progress=False)
    for target in FP32:
        entry = bundle.manifest.targets[target]
        assert entry.verification["passed"], (target, entry.verification)
        session = bundle.load(target, threads=1)
        got = session.run([x.numpy() for x in inputs])[0]
        with torch.no_grad():
            want = model(*inputs).numpy()
        scale = float(abs(want).max()) or 1.0
        assert abs(got - want).max() / scale < 1e-4, target
