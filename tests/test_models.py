"""edgekit.models: every zoo entry builds, runs, is deterministic and matches the references."""

from __future__ import annotations

import pytest
import torch

from edgekit.errors import UnknownNameError
from edgekit.models import build, get_spec, list_models, output_layers
from edgekit.models.zoo import count_macs, count_params

ALL = [
    "cnn", "lstm", "transformer", "image_text", "image_audio", "embedding",
    "vae", "gan", "autoencoder", "mobilenet_v2", "ds_cnn", "resnet8",
]


def test_zoo_lists_every_model():
    assert sorted(ALL) == list_models()


def test_unknown_model_suggests():
    with pytest.raises(UnknownNameError, match="did you mean 'resnet8'"):
        get_spec("resnet9")


@pytest.mark.parametrize("name", ALL)
def test_build_and_forward(name):
    spec = get_spec(name)
    torch.manual_seed(0)
    model = build(name)
    assert not model.training
    assert model.edgekit_name == name
    inputs = spec.example_inputs(2)
    assert len(inputs) == len(spec.input_names)
    assert all(torch.equal(a, b) for a, b in zip(inputs, spec.example_inputs(2)))
    out = model(*inputs)
    out = out if isinstance(out, tuple) else (out,)
    assert len(out) == len(spec.output_names)
    assert all(o.shape[0] == 2 and torch.isfinite(o).all() for o in out)
    # eval mode is deterministic (no sampling, no dropout)
    again = model(*inputs)
    again = again if isinstance(again, tuple) else (again,)
    assert all(torch.equal(a, b) for a, b in zip(out, again))
    # the real task feeds exactly these inputs
    task = spec.task()
    assert len(task.test.inputs) == len(inputs)
    for t, e in zip(task.test.inputs, inputs):
        assert t.dtype == e.dtype and t.shape[1:] == e.shape[1:]
    layers = output_layers(model)
    assert layers and all(isinstance(m, torch.nn.Linear) for m in layers)


@pytest.mark.parametrize(
    "name,params,tol",
    [("cnn", 33_800, 0.05), ("mobilenet_v2", 700_000, 0.05), ("lstm", 19_600, 0.05),
     ("ds_cnn", 21_100, 0.05)],
)
def test_reference_param_counts(name, params, tol):
    assert abs(count_params(build(name)) - params) <= tol * params


def test_reference_macs():
    macs = count_macs(build("ds_cnn"), get_spec("ds_cnn").example_inputs(1))
    assert abs(macs - 5.39e6) < 0.05 * 5.39e6
    # plain conv 3x3 1->2 on 4x4 + linear 32->3: 2*16*9 + 3*32
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.Flatten(),
                            torch.nn.Linear(32, 3))
    assert count_macs(m, (torch.zeros(5, 1, 4, 4),)) == 2 * 16 * 9 + 96


def test_mobilenet_width_mult():
    small = count_params(build("mobilenet_v2", width_mult=0.35))
    big = count_params(build("mobilenet_v2", width_mult=1.0))
    assert small < count_params(build("mobilenet_v2")) < big


@pytest.mark.parametrize("name", ["image_text", "image_audio", "embedding"])
def test_fusion_models_use_both_inputs(name):
    spec = get_spec(name)
    torch.manual_seed(0)
    model = build(name)
    a, b = spec.example_inputs(4)
    base = model(a, b)
    base = torch.cat(base, 1) if isinstance(base, tuple) else base
    other_a = a.flip(0)
    other_b = b.flip(0)
    out_a = model(other_a, b)
    out_b = model(a, other_b)
    out_a = torch.cat(out_a, 1) if isinstance(out_a, tuple) else out_a
    out_b = torch.cat(out_b, 1) if isinstance(out_b, tuple) else out_b
    assert not torch.allclose(base, out_a)
    assert not torch.allclose(base, out_b)


def test_fusion_classifier_output_depends_jointly_on_both():
    # changing the question alone changes the logits for the same image
    spec = get_spec("image_text")
    torch.manual_seed(0)
    model = build("image_text")
    image, text = spec.example_inputs(3)
    text2 = text.clone()
    text2[:, 3] = (text2[:, 3] - 12) % 10 + 13  # a different digit word
    assert not torch.allclose(model(image, text), model(image, text2))


def test_vae_samples_only_in_train_mode():
    torch.manual_seed(0)
    model = build("vae")
    (x,) = get_spec("vae").example_inputs(4)
    recon, mu, _ = model(x)
    model.train()
    noisy, mu2, _ = model(x)
    torch.testing.assert_close(mu, mu2)
    assert not torch.allclose(recon, noisy)


def test_autoencoder_score_is_mean_squared_error():
    torch.manual_seed(0)
    model = build("autoencoder")
    (x,) = get_spec("autoencoder").example_inputs(3)
    recon, score = model(x)
    torch.testing.assert_close(score, ((recon - x) ** 2).mean(dim=(1, 2, 3)))


@pytest.mark.parametrize("name", ALL)
def test_spec_factory_builds_in_eval_mode_and_tags_the_name(name):
    model = get_spec(name).factory()
    assert not model.training and model.edgekit_name == name


def test_build_kwargs_reach_factory():
    assert build("cnn", num_classes=3)(torch.zeros(1, 1, 8, 8)).shape == (1, 3)
    assert build("lstm", hidden=16).lstm.hidden_size == 16
