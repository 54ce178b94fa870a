"""Does φ regularize? Train CIFAR ResNet-20 from scratch on small real targets with and without it.

    python benchmarks/transfer_gain.py                         # the full table (see --help for the budget)
    python benchmarks/transfer_gain.py --seeds 0 --max_train_steps 20 --eval_mc_samples 2   # a smoke run

Targets: `fashion_mnist` and `mnist` from ../shared/data, 100 training images per class (the same subset for
every run, seed 0) and 200 test images per class. Each run is `recipes/transfer.py` in a subprocess
(one torch thread, `--jobs` at a time) with a fixed step budget; MetaPerturb runs are then evaluated again
in one-pass "mean" mode from their saved folder, calibrated as the recipe does it (`mp_hub.calibrate_mean_mode`
on the training images) and not. Regularizers: none, DropBlock, MetaPerturb with the zoo
φ, MetaPerturb with the authors' φ (converted from ../shared/reference/perturb_750.pth). Also a tiny ViT from
scratch on fashion_mnist, none vs MetaPerturb. Prints a table (mean ± std over seeds), each φ's check against
the regularization goal (`regularization_goal.py`; the record's `goal`, by row label) and a final JSON line,
written to benchmarks/results/ too (`results_file_name`; --results_dir, --results_file) and, for the zoo
bundler (`tools/bundle_zoo.py --benchmark`), to <work_dir>/transfer_gain.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from _common import add_results_arguments, publish, results_name, results_path, seeds_setting, write_json_atomic
from regularization_goal import evaluate_goal, goal_report, phi_labels

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mp_hub import MetaPerturb, load_perturbed  # noqa: E402
from mp_hub.checkpointing import atomic_write  # noqa: E402
from mp_hub.data import ClassificationData, calibration_batches, decode_images, samples_per_class_subset  # noqa: E402
from mp_hub.evaluation import compute_metrics  # noqa: E402
from mp_hub.mean_mode import calibration_targets  # noqa: E402
from mp_hub.mean_mode.predict import mean_predict  # noqa: E402
from mp_hub.zoo import DEFAULT_PHI  # noqa: E402

REGULARIZERS = ("none", "dropblock", "zoo", "official")
TINY_VIT = {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 128,
            "patch_size": 4}  # fmt: skip
TRAIN_PER_CLASS, TEST_PER_CLASS = 100, 200  # each target's images


def build_target(source_dir: Path, out: Path, train_per_class: int, test_per_class: int) -> Path:
    """A Hub-layout folder with the fixed s-dataset train subset and a class-balanced test subset."""
    from datasets import load_dataset

    if out.is_dir():
        return out
    source = load_dataset(str(source_dir))
    tmp = out.with_name(out.name + ".tmp")  # built aside and renamed: a killed build leaves no half dataset
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "data").mkdir(parents=True)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = torch.as_tensor(source[split]["label"])
        subset = source[split].select(samples_per_class_subset(labels, per_class, seed=0).tolist())
        subset.to_parquet(str(tmp / "data" / f"{split}-00000-of-00001.parquet"))
    os.replace(tmp, out)
    return out


RUN_COMMAND = "benchmark_command.json"  # in a run's folder, next to its results: the command that made them


def kappa_ablation(args, regularizer: str) -> float | None:
    """The κ anneal fraction a φ run is ablated with (None: the recipe's default, as in the main table)."""
    fraction = getattr(args, "noise_anneal_fraction", None)
    return fraction if regularizer == "metaperturb" else None


def weight_decay_ablation(args) -> float | None:
    """The Adam weight decay every run is ablated with (None: the recipe's default, as in the main table)."""
    return getattr(args, "weight_decay", None)


def weight_decay_setting(weight_decay: float | None) -> str | None:
    """The run folders' and records' name part for a --weight_decay ablation (`wd<W>`), or None for the main
    table's."""
    return None if weight_decay is None else f"wd{weight_decay:g}"


def ablation_problem(args) -> str | None:
    """Why an ablation cannot be run as given (--noise_anneal_fraction: the recipe's own range and a φ row to
    ablate; --weight_decay: finite and >= 0), or None."""
    decay = weight_decay_ablation(args)
    if decay is not None and not 0.0 <= decay < float("inf"):  # (NaN fails too)
        return f"--weight_decay must be finite and >= 0, got {decay}"
    fraction = args.noise_anneal_fraction
    if fraction is None:
        return None
    if not 0.0 <= fraction <= 1.0:  # (NaN fails too)
        return f"--noise_anneal_fraction must be in [0, 1], as the recipe's, got {fraction}"
    if not {"zoo", "official"} & set(args.regularizers):
        return "--noise_anneal_fraction ablates the φ runs: --regularizers must include zoo or official"
    return None


def run_dir(args, target: str, regularizer: str, phi: str | None, seed: int, model: str) -> Path:
    # (`parse_run_name` reads it back, for mean_vs_mc.py and confidence.py)
    fraction, decay = kappa_ablation(args, regularizer), weight_decay_setting(weight_decay_ablation(args))
    phi_name = Path(phi).name if phi else "none"
    ablation = (f"-kappa{fraction:g}" if fraction is not None else "") + (f"-{decay}" if decay else "")
    return args.work_dir / "runs" / f"{target}-{model}-{regularizer}-{phi_name}{ablation}-s{seed}"


RUN_NAME = re.compile(
    r"(?P<target>[a-z_]+)-(?P<model>resnet20|vit)-(?P<regularizer>none|dropblock|metaperturb)-(?P<phi>.+?)"
    r"(?:-kappa(?P<kappa>[0-9.e+-]+))?(?:-wd(?P<weight_decay>[0-9.e+-]+))?-s(?P<seed>\d+)"
)


def parse_run_name(name: str) -> dict[str, str | int | float | None] | None:
    """What `run_dir` put in a run folder's name (target, model, regularizer, φ, κ and weight-decay ablations or
    None, seed), or None for a name it does not make."""
    match = RUN_NAME.fullmatch(name)
    if match is None:
        return None
    named = match.groupdict()
    ablations = {key: None if named[key] is None else float(named[key]) for key in ("kappa", "weight_decay")}
    return {**named, **ablations, "seed": int(match["seed"])}


def in_main_table(named: dict, weight_decay: float | None = None) -> bool:
    """Whether a `parse_run_name` result is one of the main table's runs (no ablation of any kind), or with
    `weight_decay`, one of that --weight_decay ablation's."""
    return named["kappa"] is None and named["weight_decay"] == weight_decay


def finished_runs(work_dir: Path, weight_decay: float | None = None) -> list[tuple[Path, dict]]:
    """The finished runs of the main table in `work_dir` (or of the `weight_decay` ablation), each with what its
    folder name says (`parse_run_name`), in name order: what the diagnostics that read saved runs start from."""
    found = []
    for folder in sorted((work_dir / "runs").iterdir()):
        named = parse_run_name(folder.name)
        if named and in_main_table(named, weight_decay) and (folder / "all_results.json").exists():
            found.append((folder, named))
    return found


def transfer_command(args, data_dir: Path, regularizer: str, phi: str | None, seed: int, model: str) -> list[str]:
    """recipes/transfer.py's arguments for one run (without the interpreter and --output_dir)."""
    command = [
        str(ROOT / "recipes" / "transfer.py"), "--dataset_dir", str(data_dir),
        "--image_size", "32", "--no_flip", "--seed", str(seed),
        "--per_device_train_batch_size", str(args.batch_size), "--max_train_steps", str(args.max_train_steps),
        "--eval_mc_samples", str(args.eval_mc_samples), "--eval_steps", str(args.max_train_steps),
        "--mean_mode_mc_fit_steps", "0",  # moment matching only: mean_vs_mc.py fits and compares both
        "--regularizer", "metaperturb" if regularizer == "metaperturb" else regularizer,
    ]  # fmt: skip
    if model == "resnet20":
        command += ["--model_type", "cifar_resnet20"]
    else:
        command += ["--model_type", "vit", "--model_config_overrides", json.dumps(TINY_VIT)]
    if phi:
        command += ["--perturb_model_id", phi]
    if (fraction := kappa_ablation(args, regularizer)) is not None:
        command += ["--noise_anneal_fraction", f"{fraction:g}"]
    if (decay := weight_decay_ablation(args)) is not None:
        command += ["--weight_decay", f"{decay:g}"]
    return command


def finished(out: Path, command: list[str], args) -> bool:
    """Whether `out` holds a finished run of exactly `command` (False: no finished run there yet). A finished
    run of another command (another budget, φ or data in the same --work_dir) is refused: its figures would be
    reported as this invocation's."""
    results_file = out / "all_results.json"
    if not results_file.exists():
        return False
    recorded = out / RUN_COMMAND
    if recorded.exists():
        if json.loads(recorded.read_text())[1:] == command[1:]:  # the settings; the recipe may be another checkout's
            return True
        differs = f"see {recorded}"
    else:  # a run from before the command was recorded: its budget, at least, must match
        results = json.loads(results_file.read_text())
        if (results["train_steps"], results["eval_mc_samples"]) == (args.max_train_steps, args.eval_mc_samples):
            return True
        differs = f"{results['train_steps']} steps, MC-{results['eval_mc_samples']}"
    sys.exit(
        f"transfer_gain: {out} holds a finished run made with other settings ({differs}); "
        "pass another --work_dir (as reproduce_zoo.sh does for its 1,000-step runs) or remove that folder"
    )


def run_transfer(args, target: str, data_dir: Path, regularizer: str, phi: str | None, seed: int, model: str) -> dict:
    out = run_dir(args, target, regularizer, phi, seed, model)
    command = transfer_command(args, data_dir, regularizer, phi, seed, model)
    if not finished(out, command, args):
        if args.report_only:
            return None
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
        log = out.parent / f"{out.name}.log"  # (not with_suffix: a folder name may hold a dot, as -kappa0.1)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as handle:
            done = subprocess.run([sys.executable, *command, "--output_dir", str(out)], stdout=handle,
                                  stderr=subprocess.STDOUT, env=env, check=False)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"run failed ({done.returncode}); see {log}")
        atomic_write(out / RUN_COMMAND, lambda tmp: tmp.write_text(json.dumps(command)))
    results = json.loads((out / "all_results.json").read_text())
    row = {
        "target": target,
        "model": model,
        "regularizer": regularizer if not phi else f"metaperturb:{Path(phi).name}",
        "seed": seed,
        "accuracy_mc": results["eval_accuracy"],
        "ece_mc": results["eval_ece"],
        "nll_mc": results["eval_nll"],
        "train_runtime_s": results.get("train_runtime_s"),
    }
    if regularizer == "metaperturb":
        row["run_dir"] = str(out)  # its mean-mode figures are added in the main thread (see main)
    return row


def load_calibrated(run_dir: Path, data_dir: Path, seed: int, mc_fit_steps: int = 0):
    """(model in eval mode, handle) from a saved run folder, with the mean-mode calibration the recipe makes
    (redone exactly as the recipe does it for runs saved before it had one, or with `mc_fit_steps` for the
    MC-matched fit; a LayerNorm model has one only with the fit)."""
    from datasets import load_dataset

    model, handle = load_perturbed(run_dir)
    model.eval()
    if calibration_targets(model, layer_norms=mc_fit_steps > 0) and (handle.calibration is None or mc_fit_steps):
        train = decode_images(load_dataset(str(data_dir))["train"], "image", "label", 32)
        data = ClassificationData(train=train, eval=None, labels=[], eval_split="test", dataset_id="", image_size=32)
        handle.calibrate_mean_mode(  # the recipe's defaults
            calibration_batches(data, 100, seed), max_images=2048, mc_fit_steps=mc_fit_steps, seed=seed
        )
    return model, handle


def mean_mode_metrics(run_dir: Path, decoded: Path, data_dir: Path, seed: int) -> dict:
    """One-pass "mean" mode, with the recipe's calibration and without."""
    torch.set_num_threads(1)
    images, labels = torch.load(decoded, weights_only=True)
    model, handle = load_calibrated(run_dir, data_dir, seed)

    def evaluate() -> dict:
        probs = torch.cat([mean_predict(model, images[i : i + 500]) for i in range(0, len(images), 500)])
        return compute_metrics(probs, labels)

    if handle.calibration is None:  # LayerNorm (the ViT): nothing to calibrate
        metrics = evaluate()
        return {"accuracy_mean": metrics["accuracy"], "ece_mean": metrics["ece"]}
    calibrated = evaluate()
    handle.remove_calibration()
    quiet = logging.getLogger("mp_hub.mean_mode.predict")  # its "uncalibrated" warning: deliberate here
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        uncalibrated = evaluate()
    finally:
        quiet.setLevel(level)
    return {
        "accuracy_mean": calibrated["accuracy"],
        "ece_mean": calibrated["ece"],
        "accuracy_mean_uncalibrated": uncalibrated["accuracy"],
        "ece_mean_uncalibrated": uncalibrated["ece"],
    }


def decode_test(data_dir: Path, out: Path) -> None:
    """The test images exactly as the recipe feeds them (RGB, 32 px, [-1, 1]), for the mean-mode evaluation."""
    from datasets import load_dataset

    from mp_hub.data import normalize

    if out.exists():
        return
    tensors = decode_images(load_dataset(str(data_dir))["test"], "image", "label", 32)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: torch.save((normalize(tensors.images), tensors.labels), tmp))


def benchmark_markdown(table: list[dict], settings: dict) -> str:
    lines = [
        "## Benchmark: does it regularize?",
        "",
        f"CIFAR ResNet-20 from scratch, {TRAIN_PER_CLASS} training images per class, "
        f"{settings.get('max_train_steps')} steps of batch {settings.get('batch_size')}, {TEST_PER_CLASS} test "
        f"images per class, mean ± std over seeds; accuracy with "
        f"MC-{settings.get('eval_mc_samples')} and with one-pass `mean` mode, calibrated (BatchNorm statistics "
        "of mean-mode activations on the training images, `mp_hub.calibrate_mean_mode`) and not "
        "(`benchmarks/transfer_gain.py`).",
        "",
        "| target | model | regularizer | seeds | acc MC (%) | acc mean (%) | acc mean, uncalibrated (%) "
        "| ECE MC (%) | ECE mean (%) | NLL MC |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = ("accuracy_mc", "accuracy_mean", "accuracy_mean_uncalibrated", "ece_mc", "ece_mean")
    for e in table:
        nll = f"{e['nll_mc'][0]:.3f} ± {e['nll_mc'][1]:.3f}" if "nll_mc" in e else "—"
        cells = " | ".join(_percent(e, key) for key in keys) + f" | {nll}"
        lines.append(f"| {e['target']} | {e['model']} | {e['regularizer']} | {e['seeds']} | {cells} |")
    return "\n".join(lines)


def _percent(entry: dict, key: str) -> str:
    """(mean, std) fractions as "mean ± std" percentages; — where the run had no such figure."""
    return f"{entry[key][0] * 100:.2f} ± {entry[key][1] * 100:.2f}" if key in entry else "—"


def summarize(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["target"], row["model"], row["regularizer"]), []).append(row)
    table = []
    for (target, model, regularizer), members in groups.items():
        entry = {"target": target, "model": model, "regularizer": regularizer, "seeds": len(members)}
        for key in ("accuracy_mc", "accuracy_mean", "accuracy_mean_uncalibrated", "ece_mc", "ece_mean",
                    "ece_mean_uncalibrated", "nll_mc"):  # fmt: skip
            values = torch.tensor([m[key] for m in members if key in m], dtype=torch.float64)
            if len(values):
                entry[key] = (values.mean().item(), values.std().item() if len(values) > 1 else 0.0)
        table.append(entry)
    return table


def zoo_phi_setting(zoo_phi: str, used: bool) -> str | None:
    """The record name's part for the φ under test: `phi_<folder name>`, or None where it is the default zoo φ or
    no row uses it (`used`), so that a record of another φ at the same settings never replaces this one."""
    return f"phi_{Path(zoo_phi).name}" if used and zoo_phi != DEFAULT_PHI else None


def results_file_name(args) -> str:
    """transfer_gain-<targets>-steps<N>-mc<k>[-phi_<name>][-<regularizers>][-novit][-seeds<...>][-kappa<f>][-wd<w>]
    .json
    (the bracketed parts only where they are not the defaults; <name> is the --zoo_phi folder's): one file per
    configuration of the table, so two φ benchmarked at the same settings never share one."""
    return results_name(
        "transfer_gain", "+".join(args.targets), f"steps{args.max_train_steps}", f"mc{args.eval_mc_samples}",
        zoo_phi_setting(args.zoo_phi, used="zoo" in args.regularizers or not args.no_vit),  # the ViT rows use it
        list(args.regularizers) != list(REGULARIZERS) and "+".join(args.regularizers), args.no_vit and "novit",
        seeds_setting(args.seeds),
        args.noise_anneal_fraction is not None and f"kappa{args.noise_anneal_fraction:g}",
        weight_decay_setting(weight_decay_ablation(args)),
    )  # fmt: skip


def target_sources(targets: list[str], target_dirs: list[str], shared: Path) -> dict[str, Path]:
    """Each target's source folder: from --target_dir NAME=DIR, else SHARED_DIR/data/NAME; refused before any run
    if it is missing."""
    given = {}
    for entry in target_dirs:
        name, sep, folder = entry.partition("=")
        if not sep or not name or not folder:
            raise SystemExit(f"--target_dir takes NAME=DIR, got {entry!r}")
        given[name] = Path(folder).resolve()
    unknown = sorted(set(given) - set(targets))
    if unknown:
        raise SystemExit(f"--target_dir names {unknown}, which --targets does not list")
    sources = {name: given.get(name, shared / "data" / name) for name in targets}
    for name, folder in sources.items():
        if not (folder / "README.md").is_file():
            raise SystemExit(f"target {name!r}: no dataset at {folder} (build it, or pass --target_dir {name}=DIR)")
    return sources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared_dir", type=Path, default=ROOT.parent / "shared")
    parser.add_argument("--work_dir", type=Path, default=ROOT / "runs" / "transfer_gain")
    parser.add_argument("--targets", nargs="+", default=["fashion_mnist", "mnist"])
    parser.add_argument(
        "--target_dir",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="where target NAME is if not in SHARED_DIR/data (e.g. animal_mnist=DIR from tools/build_animal_mnist.py)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--zoo_phi", default=DEFAULT_PHI, help="zoo name or folder of the φ to test")
    parser.add_argument("--max_train_steps", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--eval_mc_samples", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one torch thread each)")
    parser.add_argument("--no_vit", action="store_true", help="skip the tiny-ViT rows")
    parser.add_argument(
        "--regularizers",
        nargs="+",
        choices=REGULARIZERS,
        default=list(REGULARIZERS),
        help="ResNet-20 rows to run (zoo: --zoo_phi; official: the authors' φ)",
    )
    parser.add_argument(
        "--noise_anneal_fraction",
        type=float,
        default=None,
        help="an ablation: the φ runs anneal κ over this fraction of the steps (default: the recipe's); their "
        "folders and the record are named for it, the other rows are the main table's runs",
    )
    parser.add_argument(
        "--weight_decay",
        type=float,
        default=None,
        help="an ablation: every run trains with this Adam weight decay (the recipe's default is 0; the authors' "
        "transfer uses 5e-4); its folders and the record are named for it",
    )
    parser.add_argument("--report_only", action="store_true", help="tabulate finished runs; start none")
    add_results_arguments(parser)
    args = parser.parse_args()
    if problem := ablation_problem(args):
        parser.error(problem)
    args.work_dir = args.work_dir.resolve()  # the runs record their commands: the same folder, the same paths
    started = time.time()

    official = args.work_dir / "phi" / "official"
    if not (official / "model.safetensors").exists():
        MetaPerturb.from_official(args.shared_dir / "reference" / "perturb_750.pth").save_pretrained(official)
    zoo_phi = args.zoo_phi
    MetaPerturb.from_pretrained(zoo_phi)  # fail early, with the loader's own message, if it is missing

    sources = target_sources(args.targets, args.target_dir, args.shared_dir)
    data_dirs = {}
    for target in args.targets:
        data_dirs[target] = build_target(
            sources[target], args.work_dir / "data" / target, TRAIN_PER_CLASS, TEST_PER_CLASS
        )
        decode_test(data_dirs[target], args.work_dir / "decoded" / f"{target}.pt")
    # Seed-major order: an interrupted benchmark has every row at the same number of seeds (rerun to resume;
    # finished runs are read back from their all_results.json).
    jobs = []
    for seed in args.seeds:
        for target, data_dir in data_dirs.items():
            phis = {"none": ("none", None), "dropblock": ("dropblock", None), "zoo": ("metaperturb", zoo_phi),
                    "official": ("metaperturb", str(official))}  # fmt: skip
            for name in args.regularizers:
                jobs.append((target, data_dir, *phis[name], seed, "resnet20"))
            if not args.no_vit and target == args.targets[0]:
                jobs += [
                    (target, data_dir, "none", None, seed, "vit"),
                    (target, data_dir, "metaperturb", zoo_phi, seed, "vit"),
                ]
    for target, data_dir, regularizer, phi, seed, model in jobs:  # refuse another run's folder before any starts
        command = transfer_command(args, data_dir, regularizer, phi, seed, model)
        finished(run_dir(args, target, regularizer, phi, seed, model), command, args)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        rows = [row for row in pool.map(lambda job: run_transfer(args, *job), jobs) if row is not None]
    # Models are loaded here, one at a time: transformers' lazy module is not thread-safe on a first attribute
    # access (two threads loading at once raised "module 'transformers' has no attribute 'PreTrainedModel'").
    for row in rows:
        if "run_dir" in row:
            target, seed = row["target"], row["seed"]
            decoded = args.work_dir / "decoded" / f"{target}.pt"
            row.update(mean_mode_metrics(Path(row.pop("run_dir")), decoded, data_dirs[target], seed))
    if len(rows) < len(jobs):
        print(f"report only: {len(jobs) - len(rows)} of {len(jobs)} runs have no results yet and are left out")
    table = summarize(rows)
    print(benchmark_markdown(table, vars(args)))
    goals = [evaluate_goal(table, label, planned_seeds=len(args.seeds)) for label in phi_labels(table)]
    for goal in goals:
        print(goal_report(goal))
    summary = {
        "max_train_steps": args.max_train_steps,
        "batch_size": args.batch_size,
        "eval_mc_samples": args.eval_mc_samples,
        "seeds": args.seeds,
        "noise_anneal_fraction": args.noise_anneal_fraction,
        "weight_decay": args.weight_decay,
        "train_images_per_class": TRAIN_PER_CLASS,
        "test_images_per_class": TEST_PER_CLASS,
        "runs_planned": len(jobs),
        "runs_finished": len(rows),
        "wall_time_s": round(time.time() - started, 1),
        "table": table,
        "goal": {goal.phi: goal.to_dict() for goal in goals},
        "runs": rows,
    }
    record = publish("transfer_gain", summary, results_path(args, results_file_name(args)))
    write_json_atomic(args.work_dir / "transfer_gain.json", record)


if __name__ == "__main__":
    main()
