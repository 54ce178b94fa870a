"""Tiny models and helpers shared by the test modules, in tests/ and its subfolders (`from _builders import ...`:
pytest puts tests/ on sys.path)."""

import functools
import importlib.util
from pathlib import Path

import numpy as np
import torch
from datasets import ClassLabel, Dataset, Features, Image, Value
from PIL import Image as PILImage
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from mp_hub import MetaPerturb
from mp_hub.kernels import passes
from mp_hub.models import model_from_type

ROOT = Path(__file__).resolve().parents[1]


class ConvNet(nn.Module):
    """A plain nn.Module (no config, so attach needs targets=): conv3x3-BN-ReLU blocks (`blocks.{i}.{0,1,2}`) of
    `widths` channels on RGB input, then a 3-way Linear `head` on the mean-pooled last feature map.

    `seed`: torch's global RNG is seeded with it just before the layers are built (None: left as it is).
    """

    def __init__(self, widths=(8, 8), seed=0):
        super().__init__()
        if seed is not None:
            torch.manual_seed(seed)
        chans = (3, *widths)
        self.blocks = nn.Sequential(
            *[nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU()) for a, b in zip(chans, widths)]
        )
        self.head = nn.Linear(widths[-1], 3)

    def forward(self, x):
        return self.head(self.blocks(x).mean((2, 3)))


class LayerNormNet(nn.Module):
    """ConvNet's layout with a LayerNorm over the channels in place of each BatchNorm: conv3x3 (`blocks.{i}.0`),
    an Identity where a site goes (`blocks.{i}.1`), LayerNorm per pixel (`blocks.{i}.2.norm`), GELU; then a 3-way
    head (logits ×20: confident, so that the MC average and one mean pass differ clearly)."""

    def __init__(self, widths=(8, 8), seed=0):
        super().__init__()
        torch.manual_seed(seed)
        chans = (3, *widths)
        self.blocks = nn.Sequential(
            *[nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.Identity(), _PixelLayerNorm(b), nn.GELU())
              for a, b in zip(chans, widths)]
        )  # fmt: skip
        self.head = nn.Linear(widths[-1], 3)
        with torch.no_grad():
            self.head.weight.mul_(20)

    def forward(self, x):
        return self.head(self.blocks(x).mean((2, 3)))


class _PixelLayerNorm(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


# --- shared by the mean-mode calibration tests ---------------------------------------------------------------

TARGETS = dict(targets=r"blocks\.\d+\.1", spatial_norm=32)  # sites after each BN: BN 1 reads site 0's output


def _noisy_phi(seed=0) -> MetaPerturb:
    torch.manual_seed(seed)
    phi = MetaPerturb()
    with torch.no_grad():  # strong noise: mean mode then differs clearly from the trained statistics
        for p in phi.parameters():
            p.mul_(30)
    return phi


def _trained(model: nn.Module, steps: int = 5) -> nn.Module:
    """A few training-mode passes: BatchNorm statistics of noisy activations, as after training with φ."""
    model.train()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(16, 3, 32, 32, generator=gen))
    return model.eval()


def _images(n=64, seed=2):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# --- shared by the site, kernel and prediction tests -----------------------------------------------------------


def make_phi(scale=25.0, seed=0):
    """φ with weights large enough that μ spreads over a few units and every ReLU mask is mixed."""
    torch.manual_seed(seed)
    phi = MetaPerturb()
    with torch.no_grad():
        for p in phi.parameters():
            p.mul_(scale)
    return phi


def resnet8(classes: int = 3, size: int = 8):
    """A seeded CIFAR ResNet-8 of widths 4-4-4 (a `transformers` model: sites found without targets=)."""
    torch.manual_seed(0)
    return model_from_type("cifar_resnet", classes, size, depth=8, hidden_sizes=[4, 4, 4])


# --- shared by the meta-training recipe's tests and mp_hub.output_dir's ---------------------------------------

META_TRAIN_COMMON = [
    "--num_tasks", "4", "--split_scheme", "halves", "--image_size", "8", "--per_device_train_batch_size", "8",
]  # fmt: skip


def load_script(path: Path, name: str):
    """A script outside any package (recipes/, tools/, a fixtures generator) as a module named `name`."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def meta_train_recipe():
    """recipes/meta_train.py as a module, loaded once (the tests that use it share it, and monkeypatch it)."""
    return load_script(ROOT / "recipes" / "meta_train.py", "meta_train_recipe")


def make_task_dataset(root: Path, classes: int = 8, per_class: int = 12, tasks=None) -> Path:
    """A Hub-layout folder (data/train-*.parquet) of tiny coloured 8×8 images, a label and a task column."""
    rng = np.random.default_rng(0)
    images, labels = [], []
    for c in range(classes):
        for _ in range(per_class):
            base = np.full((8, 8, 3), 30 * c % 255, np.int64)
            base[:4, :, c % 3] = 200
            images.append(PILImage.fromarray(np.clip(base + rng.integers(0, 40, base.shape), 0, 255).astype(np.uint8)))
            labels.append(c)
    tasks = tasks if tasks is not None else [label // 2 for label in labels]
    features = Features(
        {
            "image": Image(),
            "label": ClassLabel(names=[f"c{i}" for i in range(classes)]),
            "task": ClassLabel(names=[f"t{i}" for i in range(max(tasks) + 1)]),
            "note": Value("string"),
        }
    )
    data = {"image": images, "label": labels, "task": tasks, "note": ["x"] * len(labels)}
    (root / "data").mkdir(parents=True)
    Dataset.from_dict(data, features=features).to_parquet(str(root / "data" / "train-00000-of-00001.parquet"))
    return root


def run_meta_train(dataset: Path, workdir: Path, out: str, *extra: str) -> Path:
    """recipes/meta_train.py's main in this process, on `dataset`, 4 tasks of 8×8 images, into workdir/out."""
    argv = ["--dataset_dir", str(dataset), "--cache_dir", str(workdir / "cache"), *META_TRAIN_COMMON]
    return meta_train_recipe().main([*argv, "--output_dir", str(workdir / out), *extra])


class RecordedOps(TorchDispatchMode):
    """Within `with RecordedOps() as ops:`, `ops.names` collects the name of every aten op that runs."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(str(func))
        return func(*args, **(kwargs or {}))


def record_site_layouts(monkeypatch) -> list[bool]:
    """A list that, until `monkeypatch` undoes it, gets one entry per fused site forward: whether its x came
    channels-last (`passes.channels_last`)."""
    layouts = []
    kernel_forward = passes.forward

    def recording_forward(lib, call, x, *args, **kwargs):
        layouts.append(passes.channels_last(x))
        return kernel_forward(lib, call, x, *args, **kwargs)

    monkeypatch.setattr(passes, "forward", recording_forward)
    return layouts
