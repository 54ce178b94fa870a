"""`mp-hub` command line: convert-official, info, zoo."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .errors import MetaPerturbError

logger = logging.getLogger("mp_hub")


def _convert_official(args: argparse.Namespace) -> int:
    from .cards import render_phi_card  # noqa: F401  (fail early if templates are missing)
    from .perturb import MetaPerturb

    phi = MetaPerturb.from_official(args.path)
    reproduction = f"mp-hub convert-official {args.path} {args.out_dir}"
    phi.save_pretrained(
        args.out_dir,
        card_extra=dict(
            title="MetaPerturb φ — the authors' Tiny ImageNet / ResNet-20 checkpoint (converted)",
            repo_id=args.push or args.out_dir,
            reproduction=reproduction,
        ),
    )
    print(f"wrote {args.out_dir} (model.safetensors, config.json, README.md)")
    if args.push:
        info = phi.push_to_hub(args.push, private=args.private, token=args.token)
        print(f"pushed to {args.push}: {getattr(info, 'commit_url', info)}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from .perturb import MetaPerturb

    phi = MetaPerturb.from_pretrained(args.id_or_dir, revision=args.revision)
    config = phi.config.to_dict()
    provenance = config.pop("provenance")
    print(f"φ: {args.id_or_dir}")
    print(f"parameters: {phi.num_parameters()}")
    print("config: " + json.dumps(config, sort_keys=True))
    print("provenance:")
    for key, value in sorted(provenance.items()):
        print(f"  {key}: {value if isinstance(value, str) else json.dumps(value)}")
    return 0


def _zoo(args: argparse.Namespace) -> int:
    from . import zoo

    for entry in zoo.entries():
        provenance = zoo.bundled_provenance(entry.name)
        where = "bundled (offline)" if provenance is not None else (entry.hub_id or "not downloadable")
        steps = provenance.get("steps") if provenance is not None else entry.steps
        trained = f"; {steps} meta-training steps" if steps is not None else ""
        print(f"{entry.name}\n  source: {entry.source_dataset}; {entry.architecture}{trained}")
        print(f"  licence: {entry.license}\n  load: {where}")
        if entry.how_to_get:
            print(f"  how to get: {entry.how_to_get}")
        if provenance is not None:
            card = zoo.bundled_path(entry.name) / "README.md"
            print(f"  card (what it is good for, and where it was not better): {card}")
            print("  results (its card's, from a benchmarks/transfer_gain.py record):")
            for line in _results_lines(provenance.get("results", [])):
                print(f"    {line}")
        elif entry.results_at:
            print(f"  results: {entry.results_at}")
    return 0


def _results_lines(rows: list[dict]) -> list[str]:
    """A bundled φ's benchmark rows (its card's model index), one line per dataset."""
    if not rows:
        return ["not benchmarked yet"]
    by_dataset: dict[str, list[str]] = {}
    for row in rows:
        by_dataset.setdefault(row["dataset_name"], []).append(f"{row['metric_name']} {row['metric_value']}")
    return [f"{dataset}: " + ", ".join(metrics) for dataset, metrics in by_dataset.items()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mp-hub", description="MetaPerturb φ on the Hugging Face Hub")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser("convert-official", help="convert the authors' perturb_750.pth to a Hub-ready folder")
    convert.add_argument("path", help="the authors' .pth (read with torch.load(weights_only=True))")
    convert.add_argument("out_dir", help="folder to write model.safetensors, config.json, README.md into")
    convert.add_argument("--push", metavar="REPO_ID", help="also push the folder to this Hub repo (one commit)")
    convert.add_argument("--private", action="store_true", default=None, help="create the repo private")
    convert.add_argument("--token", default=None, help="Hub token (default: the logged-in one)")
    convert.set_defaults(func=_convert_official)

    info = commands.add_parser("info", help="print the config, parameter count and provenance of a φ")
    info.add_argument("id_or_dir", help="a local folder, a zoo name or a Hub repo id")
    info.add_argument("--revision", default=None)
    info.set_defaults(func=_info)

    zoo = commands.add_parser("zoo", help="list the named φ checkpoints")
    zoo.set_defaults(func=_zoo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except MetaPerturbError as err:
        print(f"mp-hub {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
