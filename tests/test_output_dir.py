"""mp_hub.output_dir: one run per --output_dir, a stale lock taken over, an unwritable folder refused before any
work, and a full disk during a checkpoint a typed error that leaves the previous checkpoint resumable."""

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _builders import load_script, make_task_dataset, meta_train_recipe, run_meta_train

from mp_hub.errors import OutputDirError, OutputDirInUseError
from mp_hub.output_dir import claim_output_dir

HOLD = "import sys, time; from mp_hub.output_dir import claim_output_dir\n" \
    "with claim_output_dir(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)"  # fmt: skip
recipe = meta_train_recipe()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_task_dataset(tmp_path_factory.mktemp("data") / "tiny")


def refusal(call, capsys) -> str:
    """The message of the typed error `call()` raises, or prints before exiting 2 (a recipe's main)."""
    try:
        code = call()
    except (OutputDirError, OutputDirInUseError) as err:
        return f"{type(err).__name__}: {err}"
    except SystemExit as err:
        code = err.code
    assert code == 2, code
    return capsys.readouterr().err


def test_a_held_folder_is_refused_in_process(tmp_path):
    with claim_output_dir(tmp_path / "out"):
        with pytest.raises(OutputDirInUseError, match=f"pid {os.getpid()}"):
            with claim_output_dir(tmp_path / "out"):
                pass
    with claim_output_dir(tmp_path / "out"):  # released on exit
        pass


def test_another_process_is_refused_and_its_lock_taken_over_after_sigkill(tmp_path, caplog):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(OutputDirInUseError, match=f"pid {proc.pid} "):
            with claim_output_dir(out):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with caplog.at_level("WARNING", logger="mp_hub.output_dir"), claim_output_dir(out):
        assert f"pid {proc.pid} " in caplog.text and "taking over" in caplog.text
    assert not (out / ".mp_hub.lock.json").exists()


def test_an_unwritable_folder_is_refused_before_any_work(dataset, tmp_path, monkeypatch, capsys):
    if os.geteuid() == 0:  # root writes through chmod: a folder under a regular file cannot be made either
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "out"
    else:
        out = tmp_path / "ro"
        out.mkdir()
        out.chmod(0o500)
    loaded = []
    monkeypatch.setattr(recipe, "load_image_dataset", lambda **kw: loaded.append(kw) or pytest.fail("data loaded"))
    argv = ["--dataset_dir", str(dataset), "--num_tasks", "4", "--max_train_steps", "1", "--output_dir", str(out)]
    message = refusal(lambda: recipe.main(argv), capsys)
    assert "OutputDirError" in message and str(out) in message and "not writable" in message
    assert not loaded


@pytest.mark.parametrize("failure", ["enospc", "iostream"])
def test_a_full_disk_at_the_second_checkpoint_is_typed_and_the_first_resumes(dataset, tmp_path, monkeypatch, failure):
    save = torch.save

    def full_disk(obj, path, *args, **kwargs):
        if "step_2" in str(path):
            if failure == "enospc":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            raise RuntimeError("basic_ios::clear: iostream error")
        return save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OutputDirError) as caught:
        run_meta_train(dataset, tmp_path, "out", "--max_train_steps", "3", "--checkpointing_steps", "1")
    message = str(caught.value)
    assert str(tmp_path / "out" / "checkpoints" / "step_2") in message
    assert ("No space left on device" if failure == "enospc" else "iostream error") in message
    checkpoints = tmp_path / "out" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_1"]  # the partial folder is gone
    monkeypatch.setattr(torch, "save", save)
    out = run_meta_train(dataset, tmp_path, "out", "--max_train_steps", "2", "--checkpointing_steps", "1",
                         "--resume_from_checkpoint", "latest")  # fmt: skip
    assert (out / "model.safetensors").is_file() and (checkpoints / "step_2" / "COMPLETE").is_file()


def test_a_full_disk_at_the_final_save_is_typed(dataset, tmp_path, monkeypatch):
    import mp_hub.hub

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), args[1])

    monkeypatch.setattr(mp_hub.hub, "save_file", full_disk)
    with pytest.raises(OutputDirError, match=f"{tmp_path / 'out'}.*No space left on device"):
        run_meta_train(dataset, tmp_path, "out", "--max_train_steps", "1")


def test_a_second_run_of_either_recipe_on_a_held_folder_is_refused_at_start(dataset, tmp_path, monkeypatch, capsys):
    transfer = load_script(Path(__file__).resolve().parents[1] / "recipes" / "transfer.py", "transfer_recipe_lock")
    out = tmp_path / "out"
    real_load, seen = recipe.load_image_dataset, []

    def load_then_start_others(**kwargs):  # while the first run holds the folder, two more start on it
        seen.append(refusal(lambda: transfer.main(["--output_dir", str(out)]), capsys))
        seen.append(refusal(lambda: recipe.main(["--dataset_dir", str(dataset), "--num_tasks", "4",
                                                  "--output_dir", str(out)]), capsys))  # fmt: skip
        return real_load(**kwargs)

    monkeypatch.setattr(recipe, "load_image_dataset", load_then_start_others)
    run_meta_train(dataset, tmp_path, "out", "--max_train_steps", "1")
    assert len(seen) == 2 and all("OutputDirInUseError" in m and f"pid {os.getpid()}" in m for m in seen)
    assert (out / "model.safetensors").is_file()  # the first run finished
