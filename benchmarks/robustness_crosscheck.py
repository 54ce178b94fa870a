"""Does mp_hub's EoT-PGD agree with torchattacks'? The same models, images, ε, steps, step size and seeds.

    python benchmarks/robustness_crosscheck.py --torchattacks_python /work/runs/advcheck/venv/bin/python

torchattacks requires torchvision, which cannot sit beside mp_hub's torch (docs/robustness.md), so it runs in an
environment of its own, made with `pip install torch==2.13.0 && pip install --no-deps torchattacks==3.5.1 &&
pip install scipy tqdm requests`, in a subprocess that imports only torch, torchattacks and this file.

Two small CNNs (plain torch, defined here) are trained on Fashion-MNIST tiny (shipped in mp_hub): `plain`, and
`noisy`, which multiplies its features by 1 + σ·N(0, 1) on every pass, training and evaluation alike (a stochastic
model, as one with φ attached). Attacks: L∞ (torchattacks' `EOTPGD`: PGD with `--eot_samples` draws on `noisy`,
one on `plain`) and L2 (`PGDL2`, `plain` only: torchattacks has no EoT for L2). Both sides start from a random
point of the ball and take `--relative_step`·ε per step; both are scored by the same code (the softmax averaged
over `--mc_samples` seeded passes on `noisy`). Each row compares the two per image: Δ = accuracy(mp_hub) −
accuracy(torchattacks), its standard error from the paired differences, and the agreement of the predictions.
Writes benchmarks/results/robustness_crosscheck-<settings>.json (the last line printed).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import torch
from _common import add_results_arguments, publish, results_name, results_path
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
ATTACKS = {"plain": ("linf:2/255", "linf:8/255", "l2:0.25", "l2:0.5"), "noisy": ("linf:2/255", "linf:8/255")}


class SmallCNN(nn.Module):
    """conv 3→16 (stride 2), conv 16→32 (stride 2), mean pool, linear; `noise` σ > 0: features × (1 + σ·N(0, 1))
    after each convolution, on every pass. Takes pixels in [0, 1] (normalises to [-1, 1] itself)."""

    def __init__(self, noise: float = 0.0, classes: int = 10):
        super().__init__()
        self.noise = noise
        self.conv1 = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.head = nn.Linear(32, classes)

    def perturb(self, x: torch.Tensor) -> torch.Tensor:
        return x * (1 + self.noise * torch.randn_like(x)) if self.noise > 0 else x

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.perturb(self.conv1((pixels - 0.5) / 0.5)))
        x = torch.relu(self.perturb(self.conv2(x)))
        return self.head(x.mean((2, 3)))


def epsilon(text: str) -> float:
    return float(Fraction(text.split(":")[1]))


@torch.no_grad()
def correct(model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor, passes: int, seed: int) -> torch.Tensor:
    """Per image: does the softmax averaged over `passes` seeded passes pick the label? (one side's scoring)"""
    torch.manual_seed(seed)
    probs = sum(torch.softmax(model(pixels), -1) for _ in range(passes))
    return probs.argmax(-1) == labels


def attack_all(settings: dict, models: dict, pixels: torch.Tensor, labels: torch.Tensor, side: str) -> dict:
    """{"<model> <attack>": per-image correctness as a list of 0/1} for one side ("mp_hub" or "torchattacks")."""
    out = {}
    for name, model in models.items():
        stochastic = model.noise > 0
        draws, passes = (settings["eot_samples"], settings["mc_samples"]) if stochastic else (1, 1)
        out[f"{name} clean"] = correct(model, pixels, labels, passes, settings["seed"]).int().tolist()
        for text in ATTACKS[name]:
            eps, alpha, started = epsilon(text), settings["relative_step"] * epsilon(text), time.process_time()
            torch.manual_seed(settings["seed"])
            if side == "mp_hub":
                from mp_hub.robustness import eot_pgd, parse_attack_specs

                spec = parse_attack_specs(text)[0]
                adversarial = eot_pgd(model, pixels, labels, spec, steps=settings["steps"], eot_samples=draws,
                                      relative_step=settings["relative_step"])  # fmt: skip
            else:
                import torchattacks

                if text.startswith("linf"):
                    attack = torchattacks.EOTPGD(model, eps=eps, alpha=alpha, steps=settings["steps"], eot_iter=draws)
                else:
                    attack = torchattacks.PGDL2(model, eps=eps, alpha=alpha, steps=settings["steps"])
                adversarial = attack(pixels, labels)
            out[f"{name} {text}"] = correct(model, adversarial, labels, passes, settings["seed"]).int().tolist()
            print(f"{side} {name} {text}: accuracy {sum(out[f'{name} {text}']) / len(labels):.4f} "
                  f"({time.process_time() - started:.0f} CPU s)", file=sys.stderr, flush=True)  # fmt: skip
    return out


def load_models(state: dict) -> dict:
    models = {}
    for name, weights in state["models"].items():
        model = SmallCNN(noise=state["noise"][name])
        model.load_state_dict(weights)
        models[name] = model.eval()
    return models


def torchattacks_side(state_file: Path, out_file: Path) -> None:
    """The subprocess in torchattacks' environment: attack the saved models and images, write per-image results."""
    import torchattacks

    state = torch.load(state_file, weights_only=True)
    results = attack_all(state["settings"], load_models(state), state["pixels"], state["labels"], "torchattacks")
    versions = {"torch": torch.__version__, "torchattacks": torchattacks.__version__,
                "torchvision_imported": "torchvision" in sys.modules}  # fmt: skip
    out_file.write_text(json.dumps({"versions": versions, "results": results}))


def train(noise: float, pixels: torch.Tensor, labels: torch.Tensor, steps: int, seed: int) -> SmallCNN:
    torch.manual_seed(seed)
    model = SmallCNN(noise=noise)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    for step in range(steps):
        rows = order[(torch.arange(64) + 64 * step) % len(labels)]
        loss = nn.functional.cross_entropy(model(pixels[rows]), labels[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def prepare(args, state_file: Path) -> dict:
    """Train both models on Fashion-MNIST tiny's train split and keep the first `--images` test images (cached)."""
    from datasets import load_dataset

    from mp_hub.data import decode_images
    from mp_hub.datasets import FASHION_MNIST_TINY

    settings = {k: getattr(args, k) for k in ("steps", "eot_samples", "mc_samples", "relative_step", "seed")}
    key = {**settings, "images": args.images, "train_steps": args.train_steps, "noise": args.noise}
    if state_file.exists():
        state = torch.load(state_file, weights_only=True)
        if state["key"] == key:
            return state
    splits = load_dataset(str(FASHION_MNIST_TINY))
    train_split = decode_images(splits["train"], "image", "label", 28)
    test_split = decode_images(splits["test"], "image", "label", 28)
    train_pixels = train_split.images.float() / 255
    noise = {"plain": 0.0, "noisy": args.noise}
    models = {name: train(sigma, train_pixels, train_split.labels, args.train_steps, args.seed).state_dict()
              for name, sigma in noise.items()}  # fmt: skip
    order = torch.randperm(len(test_split), generator=torch.Generator().manual_seed(0))[: args.images]
    state = {"key": key, "settings": settings, "noise": noise, "models": models,
             "pixels": test_split.images[order].float() / 255, "labels": test_split.labels[order]}  # fmt: skip
    state_file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, state_file)
    return state


def compare(ours: list[int], theirs: list[int]) -> dict:
    """Paired per-image comparison: Δ accuracy (points), its standard error, n10 / n01, and agreement."""
    n = len(ours)
    n10 = sum(a and not b for a, b in zip(ours, theirs))
    n01 = sum(b and not a for a, b in zip(ours, theirs))
    delta = (n10 - n01) / n
    se = math.sqrt(max((n10 + n01) / n - delta**2, 0.0) / n)
    return {"accuracy_mp_hub": sum(ours) / n, "accuracy_torchattacks": sum(theirs) / n, "delta_points": 100 * delta,
            "se_points": 100 * se, "n10": n10, "n01": n01, "agreement": 1 - (n10 + n01) / n,
            "within_noise": abs(delta) <= max(2 * se, 1 / n)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--torchattacks_python", type=Path, help="python of an environment with torchattacks")
    parser.add_argument("--work_dir", type=Path, default=ROOT / "runs" / "robustness_crosscheck")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--relative_step", type=float, default=0.1, help="× ε; 50 × 0.1 = the paper's 200 × 0.025")
    parser.add_argument("--eot_samples", type=int, default=5)
    parser.add_argument("--mc_samples", type=int, default=20)
    parser.add_argument("--noise", type=float, default=0.5, help="σ of the noisy model's multiplicative noise")
    parser.add_argument("--train_steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--torchattacks_side", type=Path, help=argparse.SUPPRESS)  # the subprocess: its input
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)  # the subprocess: its output
    add_results_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.torchattacks_side is not None:
        return torchattacks_side(args.torchattacks_side, args.out)
    if args.torchattacks_python is None:
        parser.error("--torchattacks_python is required: the python of an environment with torchattacks")
    sys.path.insert(0, str(ROOT))
    state_file = args.work_dir / "models_and_images.pt"
    state = prepare(args, state_file)
    theirs_file = args.work_dir / "torchattacks.json"
    command = [str(args.torchattacks_python), __file__, "--torchattacks_side", str(state_file), "--out",
               str(theirs_file), "--threads", str(args.threads)]  # fmt: skip
    child = subprocess.Popen(command)  # both sides at once: one thread each
    ours = attack_all(state["settings"], load_models(state), state["pixels"], state["labels"], "mp_hub")
    if child.wait() != 0:
        sys.exit(f"the torchattacks side failed ({child.returncode}): {' '.join(command)}")
    theirs = json.loads(theirs_file.read_text())
    rows = {row: compare(ours[row], theirs["results"][row]) for row in ours}
    for row, got in rows.items():
        ours_accuracy, theirs_accuracy = got["accuracy_mp_hub"], got["accuracy_torchattacks"]
        print(f"{row}: mp_hub {ours_accuracy:.4f}, torchattacks {theirs_accuracy:.4f}, Δ {got['delta_points']:+.2f} "
              f"± {got['se_points']:.2f} points, agreement {got['agreement']:.3f}")  # fmt: skip
    name = results_name("robustness_crosscheck", f"n{args.images}", f"steps{args.steps}", f"eot{args.eot_samples}")
    publish("robustness_crosscheck", {"settings": {**state["key"]}, "torchattacks_env": theirs["versions"],
                                      "all_within_noise": all(r["within_noise"] for r in rows.values()),
                                      "rows": rows}, results_path(args, name))  # fmt: skip


if __name__ == "__main__":
    main()
