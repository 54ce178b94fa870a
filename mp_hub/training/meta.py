"""One meta-training step, as the authors' `train_src.py`, for several tasks per process sharing one φ.

Per task t: θ_t takes one Adam step on a train batch with φ on; then, with every BatchNorm of model_t in eval
mode (the PerturbSites stay in training mode: batch statistics, running stats updated), the loss of a
valid batch of the same task gives ∇φ. ∇φ is averaged over all tasks of all processes and φ takes one
Adam step, the same on every process.

Everything random is drawn from streams seeded by (seed, task): θ_t's init, the data order, the augmentation
and φ's noise (the sites sample with the device's default generator, so each task swaps its own state in
for its step). The result is therefore the same for any number of processes.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ..attach import attach
from ..data.tasks import TaskData, derive_seed
from ..errors import CheckpointError, ConfigError
from ..models import model_from_type
from ..perturb import MetaPerturb
from .distributed import exact_task_sum

logger = logging.getLogger(__name__)

METRICS = ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy")


def _attach(model: nn.Module, phi: MetaPerturb):
    return attach(model, phi, trainable_phi=True)


def default_generator(device: torch.device) -> torch.Generator | None:
    """The generator `torch.randn_like` uses on `device` (None where torch exposes none, e.g. MPS)."""
    if device.type == "cpu":
        return torch.default_generator
    backend = getattr(torch, device.type, None)
    generators = getattr(backend, "default_generators", None)
    if not generators:
        return None
    return generators[device.index if device.index is not None else backend.current_device()]


# Graphs one task model may compile: train, and valid (BatchNorm in eval), with room for a second batch shape each.
GRAPHS_PER_TASK_MODEL = 4


def compile_task_models(models: list[nn.Module], backend: str) -> None:
    """torch.compile each task model (φ's sites included) with `backend`, in place: `nn.Module.compile` keeps the
    state_dict keys, so checkpoints are the same as eager ones.

    Dynamo guards on the identity of each model's edited forwards (`mp_hub.model_edits`), so every model compiles
    graphs of its own: the recompile limit is raised to hold them all, else the models past it would run eager.
    """
    known = torch.compiler.list_backends(exclude_tags=())
    if backend not in known:
        raise ConfigError(f"unknown torch.compile backend {backend!r}; the backends here are {sorted(known)}")
    needed = GRAPHS_PER_TASK_MODEL * len(models)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, needed)
    for model in models:
        model.compile(backend=backend)


def seeded_phi(seed: int, **config_kwargs) -> MetaPerturb:
    """φ with the authors' N(0, 0.01) init drawn from `seed` (the main process's one is broadcast anyway)."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(derive_seed(seed, "phi"))
        return MetaPerturb(**config_kwargs)


def phi_sha256(phi: MetaPerturb) -> str:
    """sha256 of φ's parameters (each one's name, shape and float32 bytes): which φ a run started from, whatever
    it was called."""
    digest = hashlib.sha256()
    for name, param in phi.named_parameters():
        values = param.detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}{tuple(values.shape)}".encode())
        digest.update(values.numpy().tobytes())
    return digest.hexdigest()


class TaskLearner:
    """A task's model θ_t with φ attached, its Adam optimizer, its data and its noise generator state."""

    def __init__(self, data: TaskData, model: nn.Module, handle, optimizer: torch.optim.Optimizer, noise_state):
        self.data = data
        self.model = model
        self.handle = handle
        self.optimizer = optimizer
        self.noise_state = noise_state
        self.device = next(model.parameters()).device
        self.theta = [p for p in handle.model_parameters() if p.requires_grad]
        self.batch_norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    @property
    def index(self) -> int:
        return self.data.spec.index

    @classmethod
    def build(
        cls,
        data: TaskData,
        phi: MetaPerturb,
        *,
        model_type: str,
        image_size: int,
        learning_rate: float,
        weight_decay: float,
        seed: int,
        device: torch.device,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> TaskLearner:
        """θ_t built and φ attached; `memory_format`: of the model's weights, which its convolutions' outputs and
        φ's fused sites follow (`torch.channels_last`: faster on CPU, rounds differently)."""
        # θ_t's init is seeded by (seed, task), never by rank, so the tasks are the same for any world size.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(derive_seed(seed, "init", data.spec.index))
            model = model_from_type(model_type, num_labels=data.spec.num_labels, image_size=image_size)
        model.to(device, memory_format=memory_format)
        handle = _attach(model, phi)
        optimizer = torch.optim.Adam(handle.model_parameters(), lr=learning_rate, weight_decay=weight_decay)
        generator = default_generator(torch.device(device))
        if generator is None:
            logger.warning("no per-task noise generator on %s: the result will depend on the world size", device)
            return cls(data, model, handle, optimizer, None)
        state = torch.Generator(device=generator.device).manual_seed(derive_seed(seed, "noise", data.spec.index))
        return cls(data, model, handle, optimizer, state.get_state())

    @contextmanager
    def own_noise(self):
        """Run with this task's noise stream as the device's default generator (φ's sites sample from it)."""
        generator = default_generator(self.device) if self.noise_state is not None else None
        if generator is None:
            yield
            return
        outer = generator.get_state()
        generator.set_state(self.noise_state)
        try:
            yield
        finally:
            self.noise_state = generator.get_state()
            generator.set_state(outer)

    def _forward(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.data.next_batch(split)
        images, labels = images.to(self.device), labels.to(self.device)
        logits = self.model(pixel_values=images).logits
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
        return loss, accuracy

    def step(self, phi_params: list[nn.Parameter]) -> torch.Tensor:
        """θ step on a train batch, then ∇φ of a valid batch: returns [∇φ (flat), train/valid loss and accuracy]."""
        with self.own_noise():
            self.model.train()  # the sites are submodules of the model (`metaperturb_sites`): they train too
            loss, accuracy = self._forward("train")
            # Gradients of θ only: φ's gradient from the train loss is discarded by the authors (zero_grad).
            grads = torch.autograd.grad(loss, self.theta, allow_unused=True)
            for p, g in zip(self.theta, grads):
                p.grad = g
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            metrics = [loss.detach(), accuracy]

            for module in self.batch_norms:  # stop BN from using/updating batch stats; the sites keep training
                module.eval()
            loss, accuracy = self._forward("valid")
            # Gradients of φ only: the authors' θ grads from this backward are zeroed before the next θ step.
            grads = torch.autograd.grad(loss, phi_params, allow_unused=True)
            metrics += [loss.detach(), accuracy]
        flat = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(phi_params, grads)])
        return torch.cat([flat, torch.stack(metrics).to(flat.dtype)])

    def site_channels(self) -> list[int]:
        return [site.channels for site in self.handle.sites]

    def state_dict(self, phi: MetaPerturb) -> dict:
        # θ_t, BN and the sites' buffers (the sites live in the model); φ is shared and saved once, elsewhere.
        shared = {id(t) for t in [*phi.parameters(), *phi.buffers()]}
        model_state = {k: v for k, v in self.model.state_dict(keep_vars=True).items() if id(v) not in shared}
        return {
            "task": self.index,
            "model": {k: v.detach().clone() for k, v in model_state.items()},
            "optimizer": self.optimizer.state_dict(),
            "data": self.data.state_dict(),
            "noise": self.noise_state,
        }

    def load_state_dict(self, state: dict, phi: MetaPerturb) -> None:
        shared = {id(t) for t in [*phi.parameters(), *phi.buffers()]}
        own = {k for k, v in self.model.state_dict(keep_vars=True).items() if id(v) not in shared}
        missing, unexpected = set(own) - set(state["model"]), set(state["model"]) - set(own)
        if missing or unexpected:
            raise CheckpointError(
                f"checkpoint of task {self.index} does not match its model: missing {sorted(missing)}, "
                f"unexpected {sorted(unexpected)}"
            )
        self.model.load_state_dict(state["model"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.data.load_state_dict(state["data"])
        self.noise_state = state["noise"]


class MetaTrainer:
    """φ, its Adam optimizer and this process's task learners; `step()` is one meta-training step."""

    def __init__(
        self,
        phi: MetaPerturb,
        learners: list[TaskLearner],
        num_tasks: int,
        *,
        learning_rate: float,
        weight_decay: float,
        lr_scheduler: Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler] | None = None,
    ):
        """`lr_scheduler`: builds φ's learning-rate schedule from φ's optimizer (None: constant); it must be a
        function of the step alone (a `LambdaLR`), as `skip_lr_schedule` rebuilds it at resume from the step."""
        self.phi = phi
        self.learners = learners
        self.num_tasks = num_tasks
        self.phi_params = list(phi.parameters())
        self.num_phi_values = sum(p.numel() for p in self.phi_params)
        self.optimizer = torch.optim.Adam(self.phi_params, lr=learning_rate, weight_decay=weight_decay)
        self.device = self.phi_params[0].device
        self.lr_scheduler = None if lr_scheduler is None else lr_scheduler(self.optimizer)

    def step(self) -> dict[str, float]:
        """One meta-training step on every process; returns the metrics averaged over all tasks."""
        rows = torch.zeros(self.num_tasks, self.num_phi_values + len(METRICS), device=self.device)
        for learner in self.learners:
            rows[learner.index] = learner.step(self.phi_params)
        mean = exact_task_sum(rows) / self.num_tasks
        offset = 0
        for p in self.phi_params:
            p.grad = mean[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        return dict(zip(METRICS, mean[self.num_phi_values :].tolist()))

    def skip_lr_schedule(self, steps: int) -> None:
        """Bring φ's schedule to where a run resumed after `steps` steps left it (no scheduler state is saved)."""
        if self.lr_scheduler is None:
            return
        with warnings.catch_warnings():  # torch warns when a schedule steps before its optimizer: here, on purpose
            warnings.filterwarnings(
                "ignore", message=r"Detected call of `lr_scheduler\.step\(\)`", category=UserWarning
            )
            for _ in range(steps):
                self.lr_scheduler.step()
