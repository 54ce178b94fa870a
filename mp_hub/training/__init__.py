"""Meta-training machinery of `recipes/meta_train.py`: task learners sharing one φ, the exact multi-process
gradient average, and the curves a recipe leaves next to its result (checkpoints: `mp_hub.checkpointing`)."""

from .distributed import assign_tasks, broadcast_parameters, check_in_sync, exact_task_sum
from .meta import METRICS, MetaTrainer, TaskLearner, compile_task_models, seeded_phi
from .report import plot_curves, plot_training_curve

__all__ = [
    "METRICS",
    "MetaTrainer",
    "TaskLearner",
    "assign_tasks",
    "broadcast_parameters",
    "check_in_sync",
    "compile_task_models",
    "exact_task_sum",
    "plot_curves",
    "plot_training_curve",
    "seeded_phi",
]
