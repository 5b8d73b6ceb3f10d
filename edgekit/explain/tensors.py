"""What every runtime capture returns: the runtime's own intermediate tensors, each tagged with
the PyTorch module its export metadata names, and the helpers that read those names."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import numpy as np

__all__ = ["RuntimeTensor", "base_tensor_name", "module_from_location",
           "module_path_from_location", "resolve_all", "resolve_by_name"]


@dataclass
class RuntimeTensor:
    """One intermediate tensor inside an artifact.

    ``order`` is its position in the runtime's topological order; ``module`` the PyTorch leaf
    module the artifact's metadata ties it to (None when it names none) and ``source`` how:
    ``"metadata"`` (ONNX name scopes, OpenVINO ``__module.`` friendly names, TFLite tensor
    locations), ``"tensor name"`` (the exporter's node name, looked up in ``torch.export``),
    ``"inherited"`` (a quantize/dequantize/convert op takes its producer's module).
    ``layout`` is ``"NHWC"`` when the runtime holds a channels-last copy of an NCHW tensor.
    ``precision`` is what the runtime computed or stored it in (``int8``, ``fp32``...).
    ``also`` holds the other modules named for the same tensor (a fused Conv + ReLU).
    """

    name: str
    op: str
    order: int
    module: str | None
    source: str
    precision: str
    values: list[np.ndarray] = field(default_factory=list)
    layout: str | None = None
    #: Other modules the metadata names for this tensor: modules the runtime fused into it.
    also: set[str] = field(default_factory=set)
    #: The index of the model output this tensor is, if it is one.
    model_output: int | None = None
    #: The tensor this one copies the value of through ops that move no value (reshape,
    #: quantize/dequantize, cast): the first of the chain; None when it is its own value.
    value_of: str | None = None

    @property
    def value_key(self) -> str:
        return self.value_of or self.name

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values[0].shape) if self.values else ()


_QDQ_SUFFIX = re.compile(r"(_QuantizeLinear|_DequantizeLinear)(_Output)?$")


def base_tensor_name(name: str) -> str:
    """The exporter's tensor name under quantization decorations:
    ``conv2d_DequantizeLinear_Output`` -> ``conv2d``, ``node_conv2d/WithoutBiases`` ->
    ``conv2d``."""
    name = name.split("/")[0]
    while True:
        stripped = _QDQ_SUFFIX.sub("", name)
        if stripped == name:
            break
        name = stripped
    return name[5:] if name.startswith("node_") else name


def resolve_by_name(names: Collection[str], fx_modules: Mapping[str, str]) -> str | None:
    """The module that ``torch.export`` gave the first of ``names`` it knows (base names
    tried too)."""
    found = resolve_all(names, fx_modules)
    return found[0] if found else None


def resolve_all(names: Collection[str], fx_modules: Mapping[str, str]) -> list[str]:
    """Every module ``names`` resolve to, in the order of ``names``, without repeats."""
    out: list[str] = []
    for n in names:
        for cand in (n, base_tensor_name(n)):
            if cand in fx_modules and fx_modules[cand] not in out:
                out.append(fx_modules[cand])
    return out


def module_path_from_location(location: str, modules: Collection[str]) -> str | None:
    """A litert-torch location ``pkg.Model/torch.nn.modules.conv.Conv2d_features.0/...`` ->
    the module path it names (``features.0``): a layer in ``modules`` or a module containing
    some (a block whose forward made the op with a functional call; ``""`` for the model
    itself), else None.

    Each part of the location must extend the path. A container the forward never calls (a
    ``ModuleList`` iterated by its parent) has no part of its own: ``TransformerEncoderLayer_0``
    under the encoder stands for ``layers.0``; one such skipped name is filled in when exactly
    one module path fits.
    """
    parts = [p for p in location.split("/") if p][1:]
    path: list[str] = []

    def known(cand: str) -> bool:
        return cand in modules or any(m.startswith(cand + ".") for m in modules)

    for part in parts:
        found = None
        for i in [m.start() for m in re.finditer("_", part)]:
            attr = part[i + 1:]
            if not attr:
                continue
            cand = ".".join([*path, *attr.split(".")])
            if known(cand):
                found = cand
                break
            # the attribute sits under a container that was never called
            head = ".".join(path) + "." if path else ""
            fills = {m[len(head):].split(".")[0] for m in modules if m.startswith(head)}
            fits = [f"{head}{f}.{attr}" for f in sorted(fills) if known(f"{head}{f}.{attr}")]
            if len(fits) == 1:
                found = fits[0]
                break
        if found is None:
            return None
        path = found.split(".")
    return ".".join(path)


def module_from_location(location: str, modules: Collection[str]) -> str | None:
    """The layer (a name in ``modules``) a litert-torch location names, else None (see
    :func:`module_path_from_location`)."""
    name = module_path_from_location(location, modules)
    return name if name and name in modules else None
