"""Meta-training machinery of `recipes/meta_train.py`: task learners sharing one φ, the exact multi-process
gradient average, resumable checkpoints, and the report (curves, reproduction command)."""

from .checkpoint import complete_checkpoints, load_checkpoint, resolve_checkpoint, save_checkpoint
from .distributed import assign_tasks, broadcast_parameters, check_in_sync, exact_task_sum
from .meta import METRICS, MetaTrainer, TaskLearner, seeded_phi

__all__ = [
    "METRICS",
    "MetaTrainer",
    "TaskLearner",
    "assign_tasks",
    "broadcast_parameters",
    "check_in_sync",
    "complete_checkpoints",
    "exact_task_sum",
    "load_checkpoint",
    "resolve_checkpoint",
    "save_checkpoint",
    "seeded_phi",
]
