"""Every zoo model x every backend: a verified export, or an error naming the op and layer."""

import pytest

from edgekit.bench.support import COLUMN_TARGETS, check_cell
from edgekit.models import list_models

CELLS = [(m, t) for m in list_models() for t in COLUMN_TARGETS.values()]


@pytest.mark.slow
@pytest.mark.parametrize("model, target", CELLS, ids=[f"{m}-{t}" for m, t in CELLS])
def test_zoo_model_exports_and_verifies(model, target):
    cell = check_cell(model, target, verify_samples=16)
    if cell["status"] == "verified":
        assert cell["max_abs_diff"] < 1e-3 and cell["min_cosine"] > 0.9999
        assert cell["bytes"] > 1000
    else:
        # A cell may fail only with an export error that names the op and the layer.
        assert cell["error"] == "ExportError", cell["message"]
        assert cell["op"] and cell["layer"], cell["message"]
