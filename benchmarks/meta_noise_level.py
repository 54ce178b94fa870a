"""Where does φ's noise go in meta-training's own task learners? `noise_level.py`'s figures, at every site of the
task models θ_t saved in a `recipes/meta_train.py` checkpoint, with the φ of that checkpoint.

    python benchmarks/meta_noise_level.py --checkpoint runs/meta/checkpoints/step_750 \
        --dataset_dir ../shared/data/glyphs10 [--checkpoint .../step_1125] [--images 200] [--draws 16]

The tasks are rebuilt from the source dataset as the run built them (its seed, split and image size, read from the
checkpoint's trainer_state.json; a dataset whose task classes differ is refused), and each task model is loaded
from its task_<t>.pt. Its first --images validation images (normalised, not augmented) give every site its input;
each site then runs --draws times on it in eval mode (running statistics, κ as trained). φ's gradient in
meta-training comes from these sites: an output the clip holds passes none back. Prints a table per checkpoint and
stage (averaged over the tasks) and writes
benchmarks/results/meta_noise_level-<source>-seed<seed>-run<digest>-step<s>[+<s>...]-n<images>-draws<d>.json, the
digest over the run's whole signature (the record holds it as "run"): the checkpoints must all be of one run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch
from _common import add_results_arguments, publish, results_name, results_path
from noise_level import (
    add_sampling_arguments,
    check_sampling,
    site_figures,
    site_inputs,
    stage_summary,
    summary_markdown,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mp_hub import MetaPerturb  # noqa: E402
from mp_hub.checkpointing import MARKER, META_TRAIN_LAYOUT, check_checkpoint  # noqa: E402
from mp_hub.checkpointing.layouts import task_file  # noqa: E402
from mp_hub.data import (  # noqa: E402
    TaskData,
    class_lists_hash,
    load_image_dataset,
    normalize,
    recorded_task_column,
    split_tasks,
    task_images,
)
from mp_hub.errors import CheckpointError, DataError  # noqa: E402
from mp_hub.training.meta import TaskLearner  # noqa: E402


def checkpoint_run(parser, checkpoint: Path) -> tuple[dict, int]:
    """The run's settings (trainer_state.json's "run") and the checkpoint's step, or parser.error naming what is
    missing or broken (checked as a resume checks it)."""
    if not (checkpoint / MARKER).exists():
        parser.error(f"{checkpoint} is not a complete meta_train.py checkpoint (no {MARKER} marker)")
    try:
        state = check_checkpoint(checkpoint, META_TRAIN_LAYOUT)
    except CheckpointError as err:
        parser.error(str(err))
    return state["run"], state["step"]


def task_learners(parser, args, checkpoint: Path, run: dict, source) -> list[TaskLearner]:
    """Every task learner of the checkpoint, its θ_t and site state loaded, with the checkpoint's φ."""
    scheme = run["split_scheme"]
    column = recorded_task_column(scheme)
    by_column = column is not None
    if by_column and column not in source.column_names:
        parser.error(f"{checkpoint} was split by the column {column!r}, which the dataset lacks")
    specs = split_tasks(
        source[args.label_column_name],
        seed=run["seed"],
        num_tasks=None if by_column else run["num_tasks"],
        split_scheme="halves" if by_column else scheme,
        task_ids=source[column] if by_column else None,
        task_names=getattr(source.features[column], "names", None) if by_column else None,
    )
    if class_lists_hash(specs) != run["task_classes_sha256"]:
        parser.error(f"--dataset_dir gives other task classes than the run of {checkpoint} (task_classes_sha256)")
    phi = MetaPerturb.from_pretrained(str(checkpoint / "phi"))
    learners = []
    for spec in specs:
        train, valid = task_images(
            source, spec, image_column=args.image_column_name, label_column=args.label_column_name,
            image_size=run["image_size"],
        )  # fmt: skip
        data = TaskData(spec, train, valid, batch_size=run["per_device_train_batch_size"], seed=run["seed"])
        # (the optimizer is rebuilt only to load the checkpoint's: its settings do not matter here)
        learner = TaskLearner.build(
            data,
            phi,
            model_type=run["architecture"],
            image_size=run["image_size"],
            learning_rate=1.0,
            weight_decay=0.0,
            seed=run["seed"],
            device=torch.device("cpu"),
        )
        state = torch.load(checkpoint / task_file(spec.index), map_location="cpu", weights_only=True)
        learner.load_state_dict(state, phi)
        learner.model.eval()
        learners.append(learner)
    return learners


def run_setting(run: dict) -> str:
    """The record name's part for the run: `seed<s>-run<digest>`, the digest over its whole signature (starting φ,
    batch, learning rate, ...), so that two runs' checkpoints of the same step never share a record."""
    digest = hashlib.sha256(json.dumps(run, sort_keys=True).encode()).hexdigest()[:8]
    return f"seed{run['seed']}-run{digest}"


def results_file_name(args, source: str, run: dict, steps: list[int]) -> str:
    return results_name(
        "meta_noise_level",
        source,
        run_setting(run),
        "step" + "+".join(map(str, steps)),
        f"n{args.images}",
        f"draws{args.draws}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, nargs="+", required=True, help="meta_train.py step_<N> folders")
    parser.add_argument("--dataset_dir", type=Path, required=True, help="the source dataset the run meta-trained on")
    parser.add_argument("--image_column_name", default="image")
    parser.add_argument("--label_column_name", default="label")
    add_sampling_arguments(parser, "validation images of each task")
    add_results_arguments(parser)
    args = parser.parse_args()
    check_sampling(parser, args)
    torch.set_num_threads(1)
    runs = [(checkpoint, *checkpoint_run(parser, checkpoint)) for checkpoint in args.checkpoint]
    steps = [step for _, _, step in runs]
    if len(set(steps)) < len(steps):  # the rows of a checkpoint are labelled by its step
        parser.error(f"--checkpoint folders of the same step ({steps}): pass checkpoints of one run")
    first = runs[0][1]
    for checkpoint, run, _ in runs[1:]:
        if run != first:
            differ = sorted(k for k in {*run, *first} if run.get(k) != first.get(k))
            parser.error(f"{checkpoint} is of another run than {runs[0][0]} ({', '.join(differ)} differ): pass "
                         "checkpoints of one run")  # fmt: skip
    try:
        splits = load_image_dataset(dataset_dir=args.dataset_dir)
    except DataError as err:
        parser.error(str(err))
    if "train" not in splits:
        parser.error(f"{args.dataset_dir} has no train split (meta-training's tasks come from it): {list(splits)}")
    source = splits["train"]
    rows = []
    for checkpoint, run, step in runs:
        for learner in task_learners(parser, args, checkpoint, run, source):
            valid = learner.data.splits["valid"]
            if args.images > len(valid):
                parser.error(f"--images {args.images}: task {learner.index} has {len(valid)} validation images")
            images = normalize(valid.images[: args.images])
            sites = [site_figures(site, x, args.draws) for site, x in site_inputs(learner.model, images, run["seed"])]
            rows.append({"checkpoint": f"step {step}", "task": learner.index, "sites": sites})
            last = sites[-1]
            print(f"step {step} task {learner.index}, last site: mean x > 0 {last['mean_input']:.3g}, "
                  f"outputs at the clip {last['output_at_clip']:.0%}, CV {last['coefficient_of_variation']:.2f}",
                  flush=True)  # fmt: skip
    summary = stage_summary(rows, group="checkpoint", count="tasks")
    print(summary_markdown(summary, group="checkpoint", count="tasks"))
    source_name = args.dataset_dir.resolve().name
    figures = {"source": source_name, "run": first, "steps": steps, "images": args.images, "draws": args.draws}
    name = results_file_name(args, source_name, first, steps)
    publish("meta_noise_level", {**figures, "summary": summary, "tasks": rows}, results_path(args, name))


if __name__ == "__main__":
    main()
