"""Real data: scikit-learn digits, spoken digits, glyphs from 22 fonts, keyword spotting on
espeak-ng voices, docstrings by library; the zoo's tasks and loaders for your own data."""

from .loaders import load_image_folder, load_npz
from .task import Split, Task
from .tasks import TASKS, auc, chamfer_mse, get_task, list_tasks, retrieval_top1, tokenize

__all__ = [
    "Split",
    "Task",
    "TASKS",
    "get_task",
    "list_tasks",
    "load_npz",
    "load_image_folder",
    "auc",
    "chamfer_mse",
    "retrieval_top1",
    "tokenize",
]
