"""recipes/meta_train.py: world-size independence (two processes on one machine, and on two "machines" of
localhost), bit-exact resume, --torch_compile, φ's schedule flags, the saved φ, its --config and the typed errors.
A tiny generated dataset, ResNet-20 on 8×8 images, CPU."""

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from _builders import META_TRAIN_COMMON, make_task_dataset, meta_train_recipe, record_site_layouts, run_meta_train
from accelerate.utils import TorchDynamoPlugin
from huggingface_hub import RepoUrl
from safetensors.torch import load_file
from torch._dynamo.utils import counters

from mp_hub import MetaPerturb
from mp_hub.errors import CheckpointError, ConfigError, DataError
from mp_hub.training import phi_sha256, seeded_phi

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "meta_train.py"
STEPS = 4
LAUNCH_TIMEOUT_S = int(os.environ.get("MP_HUB_TEST_LAUNCH_TIMEOUT", "240"))  # a loaded machine may need more
COMPILE_ATOL = 1e-6  # compiled graphs may round differently from eager ones; φ's entries are far larger
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
    assert prov["lr_schedule"] is None  # the authors' constant rate
    assert prov["initial_phi"] is None  # the authors' init, drawn from --seed
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


def test_a_run_can_start_from_a_saved_phi(full_run, dataset, workdir):
    """--perturb_model_id: the saved φ is where the run starts, bit for bit (the seeded init, saved and given back,
    ends with the default run's φ); another φ's config travels on, and the run records which φ it started from."""
    seeded = workdir / "seeded_phi"
    seeded_phi(0).save_pretrained(seeded)
    same = run_meta_train(
        dataset, workdir, "from_seeded", "--max_train_steps", str(STEPS), "--perturb_model_id", str(seeded)
    )
    reference, got = _phi(full_run), _phi(same)
    assert all(torch.equal(reference[k], got[k]) for k in reference)

    start = seeded_phi(5, clip_value=50.0)
    start.save_pretrained(workdir / "other_phi")
    out = run_meta_train(
        dataset, workdir, "from_other", "--max_train_steps", "1", "--perturb_model_id", str(workdir / "other_phi")
    )
    phi = MetaPerturb.from_pretrained(out)
    assert phi.config.clip_value == 50.0
    assert phi.config.provenance["initial_phi"] == {"id": str(workdir / "other_phi"), "sha256": phi_sha256(start)}
    assert phi_sha256(phi) != phi_sha256(start)  # it trained
    assert "initial_phi" in (out / "README.md").read_text()


def test_resuming_from_another_starting_phi_is_a_config_error(dataset, workdir):
    run_meta_train(dataset, workdir, "switched", "--max_train_steps", "1", "--checkpointing_steps", "1")
    seeded_phi(6).save_pretrained(workdir / "switched_phi")
    with pytest.raises(ConfigError, match="belongs to another run.*initial_phi"):
        run_meta_train(
            dataset, workdir, "switched", "--max_train_steps", "2", "--resume_from_checkpoint", "latest",
            "--perturb_model_id", str(workdir / "switched_phi"),
        )  # fmt: skip


def _launch(launches: list[list[str]], dataset: Path, workdir: Path, out: Path) -> list[tuple[int, str, str]]:
    """(exit code, stdout, stderr) of `accelerate launch` of the recipe with each list of launch flags, run at once
    (CPU processes: --multi_gpu with ACCELERATE_USE_CPU=1), 4 tasks."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    recipe_args = [
        str(RECIPE), "--dataset_dir", str(dataset), "--cache_dir", str(workdir / "cache"), *META_TRAIN_COMMON,
        "--max_train_steps", str(STEPS), "--sync_check_steps", "1", "--output_dir", str(out),
    ]  # fmt: skip
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--mixed_precision", "no"]
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    launchers = [
        subprocess.Popen([*accelerate, "--dynamo_backend", "no", *launch, *recipe_args], env=env, cwd=ROOT, **pipes)
        for launch in launches
    ]
    try:
        outputs = [launcher.communicate(timeout=LAUNCH_TIMEOUT_S) for launcher in launchers]
    finally:
        for launcher in launchers:  # the workers too (a session each): a hung rendezvous must not outlive the test
            with contextlib.suppress(ProcessLookupError):
                os.killpg(launcher.pid, signal.SIGKILL)
    return [(launcher.returncode, *output) for launcher, output in zip(launchers, outputs)]


def _assert_same_phi(results: list[tuple[int, str, str]], reference: Path, out: Path) -> None:
    """Every launcher succeeded, the main process reported a world of 2, and φ is `reference`'s, bit for bit."""
    for rank, (code, _, stderr) in enumerate(results):
        assert code == 0, f"launcher {rank}: {stderr[-4000:]}"
    summary = [json.loads(line) for line in results[0][1].splitlines() if line.startswith("{")]
    assert summary and summary[-1]["world_size"] == 2, results[0][1][-2000:]
    expected, got = _phi(reference), _phi(out)
    diff = max((expected[k] - got[k]).abs().max().item() for k in expected)
    assert all(torch.equal(expected[k], got[k]) for k in expected), f"max abs difference {diff}"
    assert MetaPerturb.from_pretrained(out).config.provenance["world_size"] == 2


def test_two_processes_match_one_process(full_run, dataset, workdir):
    """`accelerate launch` with 2 CPU processes × 2 tasks ends with the φ of 1 process × 4 tasks."""
    out = workdir / "two_procs"
    launch = ["--num_processes", "2", "--num_machines", "1", "--main_process_port", "0"]
    _assert_same_phi(_launch([launch], dataset, workdir, out), full_run, out)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_machines_on_localhost_match_one_process(full_run, dataset, workdir):
    """The multi-node launch, one `accelerate launch` per machine (--machine_rank 0 and 1, one CPU process each,
    the main machine at 127.0.0.1), ends with the φ of 1 process × 4 tasks."""
    out, port = workdir / "two_machines", _free_port()
    launches = [
        ["--num_machines", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
         "--main_process_port", str(port), "--num_processes", "2"]
        for rank in (0, 1)
    ]  # fmt: skip
    results = _launch(launches, dataset, workdir, out)
    _assert_same_phi(results, full_run, out)
    assert not any(line.startswith("{") for line in results[1][1].splitlines())  # only the main process reports


def test_torch_compile_gives_the_eager_phi(dataset, workdir, caplog):
    """--torch_compile (the aot_eager backend: no C++ build) ends a 2-task, 2-step run with the eager run's φ, to
    float32 rounding; every task model runs compiled (a recompile limit of 2 graphs would otherwise stop the second
    model: each model has graphs of its own, and the recipe raises the limit to hold them)."""
    small = ["--num_tasks", "2", "--max_train_steps", "2"]
    eager = run_meta_train(dataset, workdir, "eager_small", *small)
    torch._dynamo.reset()  # graphs that earlier tests compiled for the same code objects count toward the limit
    counters.clear()
    # torch's own patch: monkeypatch's undo deletes the attribute, which hides the option from every later test
    limit = torch._dynamo.config.patch(recompile_limit=2, fail_on_recompile_limit_hit=True)
    with limit, caplog.at_level(logging.INFO, logger="meta_train_recipe"):
        compiled = run_meta_train(
            dataset, workdir, "compiled_small", *small, "--torch_compile", "--torch_compile_backend", "aot_eager"
        )
    assert "torch.compile(backend='aot_eager')" in caplog.text
    assert counters["stats"]["unique_graphs"] >= 1  # the models did run compiled
    expected, got = _phi(eager), _phi(compiled)
    assert not torch.equal(expected["channel_scale.fc.weight"], seeded_phi(0).state_dict()["channel_scale.fc.weight"])
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=COMPILE_ATOL, msg=name)


def test_channels_last_gives_the_nchw_phi(dataset, workdir, monkeypatch):
    """--channels_last: the task models' sites see channels-last features, and a 2-task, 2-step run ends with the
    NCHW run's φ but for rounding: the convolutions round differently, and where a gradient entry is near Adam's
    eps its step (up to lr = 1e-3) moves with it; a tenth of a step is allowed."""
    from mp_hub import kernels

    small = ["--num_tasks", "2", "--max_train_steps", "2"]
    nchw = run_meta_train(dataset, workdir, "nchw_small", *small)
    layouts = record_site_layouts(monkeypatch)
    last = run_meta_train(dataset, workdir, "channels_last_small", *small, "--channels_last")
    assert all(layouts) and (layouts or not kernels.fused_available())
    expected, got = _phi(nchw), _phi(last)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-4, msg=name)


@pytest.mark.parametrize(
    ("torch_compile", "flag_backend", "launcher_backend", "expected"),
    [
        (False, None, "no", None),
        (True, None, "no", "inductor"),
        (True, "aot_eager", "no", "aot_eager"),
        (False, None, "aot_eager", "aot_eager"),  # `accelerate launch --dynamo_backend` is honoured, not dropped
        (True, "aot_eager", "aot_eager", "aot_eager"),
    ],
)
def test_compile_backend_comes_from_the_flags_or_the_launcher(torch_compile, flag_backend, launcher_backend, expected):
    args = argparse.Namespace(torch_compile=torch_compile, torch_compile_backend=flag_backend)
    accelerator = SimpleNamespace(state=SimpleNamespace(dynamo_plugin=TorchDynamoPlugin(backend=launcher_backend)))
    assert recipe.compile_backend(args, accelerator) == expected


def test_compile_backend_disagreeing_with_the_launcher_is_a_config_error():
    args = argparse.Namespace(torch_compile=True, torch_compile_backend="aot_eager")
    accelerator = SimpleNamespace(state=SimpleNamespace(dynamo_plugin=TorchDynamoPlugin(backend="inductor")))
    with pytest.raises(ConfigError, match="aot_eager disagrees with accelerate's --dynamo_backend inductor"):
        recipe.compile_backend(args, accelerator)


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (["--torch_compile_backend", "aot_eager"], "--torch_compile_backend aot_eager needs --torch_compile"),
        (["--torch_compile", "--torch_compile_backend", "nope"], "--torch_compile_backend 'nope' is not one of"),
        (["--lr_scheduler_type", "reduce_lr_on_plateau"], "reduce_lr_on_plateau.*follow a metric"),
        (["--lr_scheduler_type", "cosinus"], "--lr_scheduler_type 'cosinus' is not one of"),
        (["--num_warmup_steps", "5"], "need a schedule, e.g. constant_with_warmup"),
        (["--lr_scheduler_type", "linear", "--lr_scheduler_kwargs", '{"gamma": 0.1}'], "linear.*gamma"),
        (["--num_warmup_steps", "-1", "--lr_scheduler_type", "linear"], "--num_warmup_steps"),
    ],
)
def test_bad_compile_and_schedule_flags_are_config_errors(flags, match):
    with pytest.raises(ConfigError, match=match):
        recipe.parse_args(["--output_dir", "out", *flags])


def test_a_phi_schedule_is_part_of_the_run_and_its_provenance():
    args = recipe.parse_args(["--output_dir", "out", "--lr_scheduler_type", "cosine", "--num_warmup_steps", "10"])
    assert recipe.phi_lr_schedule(args) == dict(
        scheduler_type="cosine", scheduler_kwargs=None, num_warmup_steps=10, num_training_steps=750
    )
    assert recipe.phi_lr_schedule(recipe.parse_args(["--output_dir", "out"])) is None


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
        (["--perturb_model_id", "./no_such_phi"], CheckpointError, "--perturb_model_id './no_such_phi'"),
    ],
)
def test_bad_input_is_a_typed_error(dataset, workdir, extra, error, match):
    with pytest.raises(error, match=match):
        run_meta_train(dataset, workdir, "bad", "--max_train_steps", "1", *extra)


@pytest.mark.parametrize("malloc_defaults", [False, True])
def test_a_cpu_run_keeps_freed_memory_unless_told_not_to(tmp_path, monkeypatch, malloc_defaults):
    calls = []
    monkeypatch.setattr(recipe, "keep_freed_memory", lambda: calls.append(1) or True)
    flags = ["--malloc_defaults"] if malloc_defaults else []
    with pytest.raises(DataError, match="absent"):  # the data are read after the setting
        recipe.main(["--dataset_dir", str(tmp_path / "absent"), "--output_dir", str(tmp_path / "out"), *flags])
    assert calls == ([] if malloc_defaults else [1])


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

        def upload_folder(self, *, repo_id, folder_path, commit_message, **kwargs):
            calls.append(("upload_folder", repo_id, sorted(os.listdir(folder_path)), commit_message))

    monkeypatch.setattr(mp_hub.hub, "HfApi", FakeApi)
    run_meta_train(dataset, workdir, "pushed", "--max_train_steps", "1", "--push_to_hub", "--hub_model_id", "me/phi")
    assert [c[0] for c in calls] == ["create_repo", "upload_folder"]  # one commit
    files = ["README.md", "config.json", "meta_train_curves.png", "model.safetensors"]
    assert calls[1][1:3] == ("me/phi", files)
