"""Write a φ to start meta-training from (`recipes/meta_train.py --perturb_model_id DIR`): the authors' init drawn
from a seed, exactly as the recipe draws it, optionally with the channel scale started elsewhere.

    python tools/initial_phi.py --seed 1 --output_dir runs/start_phi                          # the recipe's own init
    python tools/initial_phi.py --seed 1 --scale_size_weight 2.4 --output_dir runs/start_phi  # s starts near 0.95

At the authors' init every weight of the scale's linear layer is N(0, 0.01), so s = sigmoid(w · [mean, var,
C/C₀, H/H₀]) starts at 0.5 on every channel of every site. `--scale_size_weight W` sets the two weights it gives the
site's size, C/C₀ and H/H₀, to W, so s starts at about sigmoid(W · (C/C₀ + H/H₀)); the tool prints that value for
each site shape of `--site_shapes` (ResNet-20's by default) and the φ's sha256, which the meta-training run records.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from mp_hub import functional as MF
from mp_hub.output_dir import writing_to
from mp_hub.training import phi_sha256, seeded_phi

RESNET20_SITES = ("16x32", "32x16", "64x8")  # channels x height of CIFAR ResNet-20's three stages at 32 px


def site_shape(text: str) -> tuple[int, int]:
    """'CxH' → (channels, height), both positive."""
    channels, sep, height = text.partition("x")
    if not sep or not channels.isdigit() or not height.isdigit() or int(channels) < 1 or int(height) < 1:
        raise argparse.ArgumentTypeError(f"a site shape is CxH, two positive ints (e.g. 16x32), got {text!r}")
    return int(channels), int(height)


def finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive(text: str) -> float:
    value = finite(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", type=Path, required=True, help="a new or empty folder")
    parser.add_argument("--seed", type=int, default=0, help="the meta-training recipe's --seed whose init to draw")
    parser.add_argument(
        "--scale_size_weight",
        type=finite,
        default=None,
        help="the scale's weight on C/C0 and on H/H0 (default: left at the authors' init)",
    )
    parser.add_argument("--site_shapes", type=site_shape, nargs="+", default=[site_shape(s) for s in RESNET20_SITES])
    parser.add_argument("--spatial_norm", type=positive, default=32.0, help="H0: the image size of the source")
    return parser


def initial_phi(seed: int, scale_size_weight: float | None):
    """The recipe's seeded init of φ, with the scale's two size weights set to `scale_size_weight` if given."""
    phi = seeded_phi(seed)
    if scale_size_weight is not None:
        with torch.no_grad():
            phi.channel_scale.fc.weight[0, -2:] = scale_size_weight  # the last two inputs are C/C₀ and H/H₀
        phi.config.provenance = dict(initial_phi={"seed": seed, "scale_size_weight": scale_size_weight})
    return phi


def initial_scale(phi, channels: int, height: int, spatial_norm: float) -> float:
    """s at a site of this shape before any feature statistics move it (mean and var features at 0)."""
    zeros = torch.zeros(channels, phi.config.h_dim)
    with torch.no_grad():
        scale = MF.channel_scale(zeros, zeros, phi.channel_scale.fc.weight, height=height,
                                 channel_norm=phi.config.channel_norm, spatial_norm=spatial_norm)  # fmt: skip
    return float(scale[0])


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.output_dir.exists() and (not args.output_dir.is_dir() or any(args.output_dir.iterdir())):
        raise SystemExit(f"--output_dir {args.output_dir} exists and is not an empty folder: pass a new one")
    phi = initial_phi(args.seed, args.scale_size_weight)
    with writing_to(args.output_dir, "the initial φ"):
        phi.save_pretrained(args.output_dir)
    for channels, height in args.site_shapes:
        scale = initial_scale(phi, channels, height, args.spatial_norm)
        print(f"site {channels}x{height}: s starts at {scale:.3f}")
    print(f"sha256 {phi_sha256(phi)} → {args.output_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
