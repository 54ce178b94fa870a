"""A broken checkpoint: `--resume_from_checkpoint latest` falls back to the newest intact one (with a warning naming
the broken checkpoint and file) and ends bit-equal to an uninterrupted run; none intact, or a broken folder named
explicitly, is a CheckpointError naming the file. Each kind of file is also checked directly, with and without the
manifest written at save time."""

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from _builders import load_script, make_task_dataset
from safetensors.torch import load_file

from mp_hub import MetaPerturb
from mp_hub.checkpointing import MANIFEST_NAME, META_TRAIN_LAYOUT, TRANSFER_LAYOUT, check_checkpoint, resolve_checkpoint
from mp_hub.errors import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
TRANSFER_ARGS = [
    "--max_train_samples", "32", "--max_eval_samples", "20", "--per_device_train_batch_size", "8",
    "--per_device_eval_batch_size", "20", "--eval_mc_samples", "2", "--periodic_eval_mc_samples", "2",
    "--mean_mode_mc_fit_steps", "0", "--model_type", "cifar_resnet20", "--model_config_overrides", '{"depth": 8}',
    "--max_train_steps", "4", "--eval_steps", "2",
]  # fmt: skip
META_ARGS = ["--num_tasks", "4", "--split_scheme", "halves", "--image_size", "8", "--per_device_train_batch_size", "8"]
TRANSFER_FILES = ["trainer_state.json", "model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl"]
META_FILES = ["trainer_state.json", "task_0000.pt", "task_0003.pt", "phi_optimizer.pt", "phi/model.safetensors"]
META_FILES += ["phi/config.json"]


def load_recipe(name: str):
    return load_script(ROOT / "recipes" / f"{name}.py", f"{name}_recipe")


def truncate(path: Path, keep: float = 0.5) -> None:
    os.truncate(path, int(path.stat().st_size * keep))


def broken_copy(checkpoints: Path, tmp_path: Path, *broken: str) -> Path:
    """A copy of the run folder holding `checkpoints`, with each `step_N/file` in `broken` truncated to half."""
    out = tmp_path / "run"
    shutil.copytree(checkpoints.parent, out)
    for name in broken:
        truncate(out / "checkpoints" / name)
    return out


def assert_warned(caplog, *words: str) -> None:
    warnings = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "is broken" in r.getMessage()
    ]
    assert len(warnings) == 1 and all(word in warnings[0] for word in words), warnings


# --- transfer ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def transfer():
    return load_recipe("transfer")


@pytest.fixture(scope="module")
def transfer_runs(tmp_path_factory, transfer) -> tuple[list[str], Path, Path]:
    """(arguments, an uninterrupted run, a run stopped after step 2 with checkpoints step_1 and step_2)."""
    root = tmp_path_factory.mktemp("transfer")
    torch.manual_seed(0)
    phi = MetaPerturb().save_pretrained(root / "phi")
    args = [*TRANSFER_ARGS, "--perturb_model_id", str(phi)]
    assert transfer.main([*args, "--output_dir", str(root / "full")]) == 0
    split = ["--checkpointing_steps", "1", "--stop_after_steps", "2", "--output_dir", str(root / "split")]
    assert transfer.main([*args, *split]) == 0
    return args, root / "full", root / "split" / "checkpoints"


@pytest.mark.parametrize("broken", ["trainer_state.json", "model.safetensors"])
def test_transfer_latest_falls_back_to_an_intact_checkpoint_and_ends_bit_equal(
    tmp_path, transfer, transfer_runs, caplog, broken
):
    args, full, checkpoints = transfer_runs
    out = broken_copy(checkpoints, tmp_path, f"step_2/{broken}")
    with caplog.at_level(logging.WARNING, logger="mp_hub"):
        assert transfer.main([*args, "--output_dir", str(out), "--resume_from_checkpoint", "latest"]) == 0
    assert_warned(caplog, str(out / "checkpoints" / "step_2"), broken)
    for name in ("model.safetensors", "metaperturb.safetensors"):
        a, b = load_file(str(full / name)), load_file(str(out / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    ra, rb = (json.loads((d / "all_results.json").read_text()) for d in (full, out))
    assert rb["resumed_from_step"] == 1
    drop = {"train_runtime_s", "train_steps_per_second", "resumed_from_step"}
    assert {k: v for k, v in ra.items() if k not in drop} == {k: v for k, v in rb.items() if k not in drop}


def test_transfer_no_intact_checkpoint_is_an_error_naming_each_file(tmp_path, transfer_runs):
    out = broken_copy(transfer_runs[2], tmp_path, "step_1/optimizer.bin", "step_2/model.safetensors")
    with pytest.raises(
        CheckpointError, match=r"no intact checkpoint.*step_2/model\.safetensors.*step_1/optimizer\.bin"
    ):
        resolve_checkpoint(out, "latest", TRANSFER_LAYOUT)


def test_transfer_broken_checkpoint_named_explicitly_is_an_error(tmp_path, transfer_runs):
    out = broken_copy(transfer_runs[2], tmp_path, "step_2/model.safetensors")
    with pytest.raises(CheckpointError, match=r"step_2/model\.safetensors is truncated or corrupted"):
        resolve_checkpoint(out, str(out / "checkpoints" / "step_2"), TRANSFER_LAYOUT)


@pytest.mark.parametrize("manifest", [True, False], ids=["manifest", "no_manifest"])
@pytest.mark.parametrize("name", TRANSFER_FILES)
def test_transfer_checker_names_a_truncated_file(tmp_path, transfer_runs, name, manifest):
    folder = broken_copy(transfer_runs[2], tmp_path) / "checkpoints" / "step_2"
    if not manifest:  # a checkpoint saved before manifests existed: checked by structure alone
        (folder / MANIFEST_NAME).unlink()
    assert check_checkpoint(folder, TRANSFER_LAYOUT)["step"] == 2
    size = (folder / name).stat().st_size
    for kept in (size // 2, size - 1):
        shutil.copy2(transfer_runs[2] / "step_2" / name, folder / name)
        os.truncate(folder / name, kept)
        with pytest.raises(CheckpointError, match=rf"step_2/{name}.*(truncated|corrupted)"):
            check_checkpoint(folder, TRANSFER_LAYOUT)


# --- meta-training -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def meta():
    return load_recipe("meta_train")


@pytest.fixture(scope="module")
def meta_runs(tmp_path_factory, meta) -> tuple[list[str], Path, Path]:
    """(arguments, an uninterrupted 4-step run, a 2-step run with checkpoints step_1 and step_2)."""
    root = tmp_path_factory.mktemp("meta")
    data = make_task_dataset(root / "tiny")  # its task column is not used: tasks by class split
    args = ["--dataset_dir", str(data), "--cache_dir", str(root / "cache"), *META_ARGS]
    meta.main([*args, "--max_train_steps", "4", "--output_dir", str(root / "full")])
    meta.main([*args, "--max_train_steps", "2", "--checkpointing_steps", "1", "--output_dir", str(root / "split")])
    return args, root / "full", root / "split" / "checkpoints"


@pytest.mark.parametrize("broken", ["trainer_state.json", "task_0002.pt"])
def test_meta_latest_falls_back_to_an_intact_checkpoint_and_ends_bit_equal(tmp_path, meta, meta_runs, caplog, broken):
    args, full, checkpoints = meta_runs
    out = broken_copy(checkpoints, tmp_path, f"step_2/{broken}")
    with caplog.at_level(logging.WARNING, logger="mp_hub"):
        meta.main([*args, "--max_train_steps", "4", "--output_dir", str(out), "--resume_from_checkpoint", "latest"])
    assert_warned(caplog, str(out / "checkpoints" / "step_2"), broken)
    reference, resumed = load_file(str(full / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert reference.keys() == resumed.keys() and all(torch.equal(reference[k], resumed[k]) for k in reference)
    final = [json.loads((d / "config.json").read_text())["provenance"]["final"] for d in (full, out)]
    assert final[0] == final[1]


def test_meta_no_intact_checkpoint_is_an_error_naming_each_file(tmp_path, meta_runs):
    out = broken_copy(meta_runs[2], tmp_path, "step_1/phi/model.safetensors", "step_2/trainer_state.json")
    with pytest.raises(CheckpointError, match=r"step_2/trainer_state\.json.*step_1/phi/model\.safetensors"):
        resolve_checkpoint(out, "latest", META_TRAIN_LAYOUT)


def test_meta_broken_checkpoint_named_explicitly_is_an_error(tmp_path, meta_runs):
    out = broken_copy(meta_runs[2], tmp_path, "step_2/task_0001.pt")
    with pytest.raises(CheckpointError, match=r"step_2/task_0001\.pt is truncated or corrupted"):
        resolve_checkpoint(out, str(out / "checkpoints" / "step_2"), META_TRAIN_LAYOUT)


@pytest.mark.parametrize("manifest", [True, False], ids=["manifest", "no_manifest"])
@pytest.mark.parametrize("name", META_FILES)
def test_meta_checker_names_a_truncated_file(tmp_path, meta_runs, name, manifest):
    folder = broken_copy(meta_runs[2], tmp_path) / "checkpoints" / "step_2"
    if not manifest:
        (folder / MANIFEST_NAME).unlink()
    assert check_checkpoint(folder, META_TRAIN_LAYOUT)["step"] == 2
    truncate(folder / name)
    with pytest.raises(CheckpointError, match=rf"step_2/{name}.*(truncated|corrupted)"):
        check_checkpoint(folder, META_TRAIN_LAYOUT)


# --- what only the manifest catches, and the checkpoint's required content ---------------------------------


def test_manifest_catches_a_changed_byte_that_keeps_the_file_well_formed(tmp_path, transfer_runs):
    folder = broken_copy(transfer_runs[2], tmp_path) / "checkpoints" / "step_2"
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF  # inside a tensor: the header still parses
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"step_2/model\.safetensors is corrupted: its sha256 differs"):
        check_checkpoint(folder, TRANSFER_LAYOUT)


@pytest.mark.parametrize(
    "runs, layout, victim",
    [
        ("transfer_runs", TRANSFER_LAYOUT, "random_states_0.pkl"),
        ("meta_runs", META_TRAIN_LAYOUT, "task_0003.pt"),
    ],
    ids=["transfer", "meta"],
)
def test_a_missing_file_or_state_key_is_named(tmp_path, request, runs, layout, victim):
    folder = broken_copy(request.getfixturevalue(runs)[2], tmp_path) / "checkpoints" / "step_2"
    (folder / MANIFEST_NAME).unlink()  # else the rewritten state would be caught as "its sha256 differs"
    state = json.loads((folder / "trainer_state.json").read_text())
    (folder / "trainer_state.json").write_text(json.dumps({k: v for k, v in state.items() if k != "history"}))
    with pytest.raises(CheckpointError, match=r"trainer_state\.json is corrupted: no history"):
        check_checkpoint(folder, layout)
    (folder / "trainer_state.json").write_text(json.dumps(state))
    (folder / victim).unlink()
    with pytest.raises(CheckpointError, match=rf"step_2 is incomplete: {victim} missing"):
        check_checkpoint(folder, layout)
