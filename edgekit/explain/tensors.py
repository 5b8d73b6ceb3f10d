"""What every runtime capture returns: the runtime's own intermediate tensors, each tagged with
the PyTorch module its export metadata names, and the helpers that read those names."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import numpy as np

__all__ = ["RuntimeTensor", "base_tensor_name", "module_from_location", "resolve_all",
           "resolve_by_name"]


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


def module_from_location(location: str, modules: Collection[str]) -> str | None:
    """A litert-torch location ``pkg.Model/torch.nn.modules.conv.Conv2d_features.0/...`` ->
    the module path that exists in ``modules`` (``features.0``), else None.

    Only locations whose every part extends the path are read: inside containers that are
    never called (a ModuleList), litert-torch also gives functional ops (a residual add, an
    activation fused into a matmul) the location of a leaf module, so its tensors there do not
    hold that module's output and are better left unmapped than compared wrongly.
    """
    parts = [p for p in location.split("/") if p][1:]
    path: list[str] = []
    for part in parts:
        found = None
        for i in [m.start() for m in re.finditer("_", part)]:
            attr = part[i + 1:]
            cand = ".".join([*path, *attr.split(".")]) if attr else ""
            if cand and (cand in modules or any(m.startswith(cand + ".") for m in modules)):
                found = cand
                break
        if found is None:
            return None
        path = found.split(".")
    name = ".".join(path)
    return name if name in modules else None
