"""The model zoo: importing this package registers every entry with the registry."""

from . import classic, edge, fusion, generative, realistic  # noqa: F401
from ._common import count_macs, count_params

__all__ = ["count_macs", "count_params"]
