"""benchmarks/host_memory.py: one tiny repeat end to end (the two settings one after the other and at once, on the
shipped Fashion-MNIST tiny), its record, and the refused arguments."""

import json

import pytest
from host_memory import main
from test_default_job import TINY


@pytest.mark.parametrize("jobs", [1, 2])
def test_both_settings_run_and_give_the_same_figures(run_script, tmp_path, jobs):
    work = tmp_path / "work"
    argv = ["--budget", "2x16", "--repeats", "1", "--jobs", str(jobs), "--work_dir", str(work), *TINY]
    report, path = run_script("host_memory.py", *argv)
    assert path.name.startswith(f"host_memory-2x16-r1-jobs{jobs}-flags") and json.loads(path.read_text()) == report
    assert report["jobs"] == jobs
    kept, defaults = report["runs"]["kept"][0], report["runs"]["defaults"][0]
    assert (kept["eval_accuracy"], kept["eval_nll"]) == (defaults["eval_accuracy"], defaults["eval_nll"])
    for run in (kept, defaults):
        assert run["wall_s"] > 0 and run["minor_page_faults"] > 0 and run["train_steps_per_second"] > 0
    assert "keeps freed memory" in (work / "repeat0-kept" / "log.txt").read_text()
    assert "keeps freed memory" not in (work / "repeat0-defaults" / "log.txt").read_text()
    assert report["wall_kept_vs_defaults"]["ratio"] == pytest.approx(kept["wall_s"] / defaults["wall_s"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--repeats", "0"], "--repeats must be >= 1"),
        (["--jobs", "3"], "invalid choice"),
        (["--malloc_defaults"], "--malloc_defaults is set by this script"),
        (["--seed=1"], "--seed is set by this script"),
        (["--budget", "2000"], "STEPSxIMAGE_SIZE"),
    ],
)
def test_bad_arguments_are_refused(argv, message, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["host_memory.py", *argv])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_used_work_dir_is_refused(tmp_path, monkeypatch, capsys):
    (tmp_path / "old-run").mkdir()
    monkeypatch.setattr("sys.argv", ["host_memory.py", "--work_dir", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2 and "is not empty" in capsys.readouterr().err
