"""recipes/meta_train.py: world-size independence, bit-exact resume, the saved φ, its --config and the typed
errors. A tiny generated dataset, ResNet-20 on 8×8 images, CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _builders import META_TRAIN_COMMON, make_task_dataset, meta_train_recipe, run_meta_train
from huggingface_hub import RepoUrl
from safetensors.torch import load_file

from mp_hub import MetaPerturb
from mp_hub.errors import ConfigError, DataError
from mp_hub.training import seeded_phi

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "meta_train.py"
STEPS = 4
recipe = meta_train_recipe()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("meta_train")


@pytest.fixture(scope="module")
def dataset(workdir) -> Path:
    return make_task_dataset(workdir / "tiny")


@pytest.fixture(scope="module")
def full_run(dataset, workdir) -> Path:
    """One process, 4 tasks, 4 steps, checkpoints every 2 steps (only the last kept)."""
    extra = ["--max_train_steps", str(STEPS), "--checkpointing_steps", "2", "--checkpoints_total_limit", "1"]
    return run_meta_train(dataset, workdir, "full", *extra)


def _phi(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


# --- the recipe ---------------------------------------------------------------------------------------------


def test_output_loads_and_has_provenance_card_and_curves(full_run):
    phi = MetaPerturb.from_pretrained(full_run)
    assert phi.num_parameters() == 82
    prov = phi.config.provenance
    assert prov["num_tasks"] == 4 and prov["steps"] == STEPS and prov["world_size"] == 1
    assert prov["split_scheme"] == "halves" and prov["source_dataset"] == "tiny" and prov["architecture"]
    assert prov["site_channels"] == [16, 64] and len(prov["task_classes_sha256"]) == 16
    assert (full_run / "meta_train_curves.png").stat().st_size > 1000
    card = (full_run / "README.md").read_text()
    assert "meta_train_curves.png" in card and "recipes/meta_train.py" in card and "--num_tasks 4" in card
    assert not torch.equal(phi.channel_scale.fc.weight, seeded_phi(0).channel_scale.fc.weight)
    # --checkpoints_total_limit 1: only the last complete checkpoint is kept
    assert sorted(p.name for p in (full_run / "checkpoints").iterdir()) == ["step_4"]
    assert (full_run / "checkpoints" / "step_4" / "COMPLETE").is_file()


def test_stopped_and_resumed_run_is_bit_equal(full_run, dataset, workdir):
    run_meta_train(dataset, workdir, "resumed", "--max_train_steps", "2", "--checkpointing_steps", "2")
    out = run_meta_train(
        dataset, workdir, "resumed", "--max_train_steps", str(STEPS), "--resume_from_checkpoint", "latest",
        "--checkpointing_steps", "2",
    )  # fmt: skip
    reference, resumed = _phi(full_run), _phi(out)
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)
    for t in range(4):  # θ_t, BN and site buffers, optimizers and generators too
        name = f"checkpoints/step_{STEPS}/task_{t:04d}.pt"
        a, b = (torch.load(d / name, weights_only=True) for d in (full_run, out))
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
        assert torch.equal(a["noise"], b["noise"])
    history = json.loads((out / f"checkpoints/step_{STEPS}/trainer_state.json").read_text())["history"]
    assert [row["step"] for row in history] == [1, 2, 3, 4]


def test_two_processes_match_one_process(full_run, dataset, workdir):
    """`accelerate launch` with 2 CPU processes × 2 tasks ends with the φ of 1 process × 4 tasks."""
    out = workdir / "two_procs"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        str(RECIPE), "--dataset_dir", str(dataset), "--cache_dir", str(workdir / "cache"), *META_TRAIN_COMMON,
        "--max_train_steps", str(STEPS), "--sync_check_steps", "1", "--output_dir", str(out),
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert summary and summary[-1]["world_size"] == 2, result.stdout[-2000:]
    reference, two = _phi(full_run), _phi(out)
    diff = max((reference[k] - two[k]).abs().max().item() for k in reference)
    assert diff <= 1e-6, f"max abs difference {diff}"
    assert MetaPerturb.from_pretrained(out).config.provenance["world_size"] == 2


def test_yaml_config_gives_defaults_and_flags_override(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("dataset_dir: somewhere\nnum_tasks: 6\nlearning_rate: 0.01\noutput_dir: out\n")
    args = recipe.parse_args(["--config", str(config), "--num_tasks", "2"])
    assert (args.dataset_dir, args.num_tasks, args.learning_rate) == ("somewhere", 2, 0.01)
    config.write_text("num_task: 6\n")
    with pytest.raises(ConfigError, match="unknown keys \\['num_task'\\]"):
        recipe.parse_args(["--config", str(config)])


@pytest.mark.parametrize(
    ("extra", "error", "match"),
    [
        (["--label_column_name", "fine_label"], DataError, r"no label column 'fine_label'; its columns are \["),
        (["--image_column_name", "note"], DataError, "not images"),
        (["--task_column", "topic"], DataError, "no task column 'topic'"),
        (["--num_tasks", "10", "--split_scheme", "disjoint"], DataError, "8 classes, fewer than the 10 tasks"),
        (["--output_dir", ""], ConfigError, "--output_dir is required"),
    ],
)
def test_bad_input_is_a_typed_error(dataset, workdir, extra, error, match):
    with pytest.raises(error, match=match):
        run_meta_train(dataset, workdir, "bad", "--max_train_steps", "1", *extra)


def test_a_task_without_valid_images_is_a_data_error(tmp_path):
    # task 3 has a single image: after the train/valid cut its train half is empty
    tasks = [0] * 40 + [1] * 40 + [2] * 15 + [3]
    data = make_task_dataset(tmp_path / "uneven", tasks=tasks)
    with pytest.raises(DataError, match=r"task 3 \(t3\) has 0 train and 1 valid"):
        run_meta_train(data, tmp_path, "bad", "--task_column", "task", "--num_tasks", "4", "--max_train_steps", "1")


def test_push_to_hub_uploads_the_saved_folder_in_one_commit(dataset, workdir, monkeypatch):
    import mp_hub.hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            self.token = token

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id))
            return RepoUrl(f"https://huggingface.co/{repo_id}")

        def upload_folder(self, *, repo_id, folder_path, commit_message, token=None, **kwargs):
            calls.append(("upload_folder", repo_id, sorted(os.listdir(folder_path)), commit_message))

    monkeypatch.setattr(mp_hub.hub, "HfApi", FakeApi)
    run_meta_train(dataset, workdir, "pushed", "--max_train_steps", "1", "--push_to_hub", "--hub_model_id", "me/phi")
    assert [c[0] for c in calls] == ["create_repo", "upload_folder"]  # one commit
    files = ["README.md", "config.json", "meta_train_curves.png", "model.safetensors"]
    assert calls[1][1:3] == ("me/phi", files)
