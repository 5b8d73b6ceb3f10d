"""PT2E quantization (torchao.quantization.pt2e) with ExecuTorch's XNNPACK quantizer.

``torch.export`` -> ``prepare_pt2e`` -> calibrate -> ``convert_pt2e``; the converted graph is
exported again and lowered to XNNPACK by :mod:`edgekit.backends.executorch`. Symmetric int8
activations, int8 weights (per output channel with ``per_channel``); modules kept in float are
left unannotated (``module_name_config[name] = None``: the annotator skips them and the global
config skips every named module), so XNNPACK runs them in float.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from ..quantize.config import QuantConfig

__all__ = ["quantize_graph", "xnnpack_quantizer"]


def xnnpack_quantizer(config: QuantConfig, keep_float: Sequence[str] = ()) -> Any:
    """ExecuTorch's ``XNNPACKQuantizer`` with the symmetric static config (with
    ``config.scale_floor``, scales floored at
    :data:`~edgekit.backends._pt2e_scales.SCALE_FLOOR`, not its 2**-12); ``keep_float``
    modules unannotated."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    from ._pt2e_scales import configured

    quantizer = XNNPACKQuantizer().set_global(configured(
        get_symmetric_quantization_config(is_per_channel=config.per_channel), config))
    for name in keep_float:
        # set_module_name(name, None) asserts "not supported yet"; a None entry is skipped by
        # the annotator and excludes the module from the global config.
        quantizer.module_name_config[name] = None
    return quantizer


def quantize_graph(model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...],
                   calibration: Sequence[Sequence[np.ndarray]], config: QuantConfig,
                   keep_float: Sequence[str] = ()) -> tuple[torch.fx.GraphModule, dict[str, Any]]:
    """The converted (quantize/dequantize) graph of ``model`` calibrated on ``calibration``,
    and what the manifest records of the recipe."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = xnnpack_quantizer(config, keep_float)
    prepared = prepare_pt2e(torch.export.export(model, tuple(example_inputs)).module(),
                            quantizer)
    with torch.no_grad():
        for batch in calibration:
            prepared(*(torch.from_numpy(np.asarray(a)) for a in batch))
    from ._pt2e_scales import floor_record, scales_below_clamp

    below = scales_below_clamp(prepared)
    graph = convert_pt2e(prepared)
    observer = quantizer.global_config.input_activation.observer_or_fake_quant_ctr
    recipe = {"quantizer": "PT2E + executorch XNNPACKQuantizer (symmetric, static)",
              "per_channel": config.per_channel,
              "activation_observer": getattr(getattr(observer, "func", observer), "__name__",
                                             str(observer)),
              "calibration_batches": len(calibration),
              "scale_floor": floor_record(config, below)}
    return graph, recipe
