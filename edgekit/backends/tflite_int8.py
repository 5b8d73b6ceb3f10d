"""PT2E quantization (torchao.quantization.pt2e) with litert-torch's quantizer, for TFLite.

``torch.export`` -> ``prepare_pt2e`` (or ``prepare_qat_pt2e``) -> calibrate -> ``convert_pt2e``;
the converted graph module goes to ``litert_torch.convert(..., quant_config=...)``. Symmetric
per-channel int8 weights and int8 activations; modules kept in float get
``set_module_name(name, None)``. The litert quantizer picks dynamic-range int8 for ops it
cannot quantize statically only when asked (``is_dynamic``), so recurrent models fall back to
float for those ops and the manifest says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from ..quantize.config import QuantConfig

__all__ = ["litert_quantizer", "pt2e_prepare", "pt2e_calibrate_convert"]


def litert_quantizer(config: QuantConfig, keep_float: Sequence[str] = (), *, qat: bool = False,
                     dynamic: bool = False) -> Any:
    from litert_torch.quantize.pt2e_quantizer import (
        PT2EQuantizer,
        get_symmetric_quantization_config,
    )

    q = PT2EQuantizer().set_global(get_symmetric_quantization_config(
        is_per_channel=config.per_channel, is_qat=qat, is_dynamic=dynamic))
    for name in keep_float:
        # set_module_name(name, None) asserts "not supported yet", but the annotator skips a
        # module whose config is None and the global config skips every named module.
        q.module_name_config[name] = None
    return q


def pt2e_prepare(model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], quantizer: Any,
                 *, qat: bool = False) -> torch.fx.GraphModule:
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, prepare_qat_pt2e

    gm = torch.export.export(model, tuple(example_inputs)).module()
    return prepare_qat_pt2e(gm, quantizer) if qat else prepare_pt2e(gm, quantizer)


def pt2e_calibrate_convert(prepared: torch.fx.GraphModule,
                           batches: Sequence[Sequence[np.ndarray]]) -> torch.fx.GraphModule:
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    with torch.no_grad():
        for b in batches:
            prepared(*(torch.from_numpy(np.asarray(a)) for a in b))
    # fold_quantize=False keeps quantize ops on float weights, which litert-torch lowers.
    return convert_pt2e(prepared, fold_quantize=False)
