"""Training machinery of the recipes: task learners sharing one φ, the exact multi-process gradient average of
meta-training, the curves a recipe leaves next to its result, a hint when a CPU run leaves cores idle, and glibc's
malloc told to keep freed memory (checkpoints: `mp_hub.checkpointing`)."""

from .distributed import assign_tasks, broadcast_parameters, check_in_sync, exact_task_sum
from .host_memory import keep_freed_memory
from .meta import METRICS, MetaTrainer, TaskLearner, compile_task_models, phi_sha256, seeded_phi
from .report import plot_curves, plot_training_curve
from .threads import cpu_thread_hint

__all__ = [
    "METRICS",
    "MetaTrainer",
    "TaskLearner",
    "assign_tasks",
    "broadcast_parameters",
    "check_in_sync",
    "compile_task_models",
    "cpu_thread_hint",
    "exact_task_sum",
    "keep_freed_memory",
    "phi_sha256",
    "plot_curves",
    "plot_training_curve",
    "seeded_phi",
]
