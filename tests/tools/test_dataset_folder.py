"""tools/dataset_folder.py: a dataset folder appears whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest
from _builders import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "dataset_folder.py"


@pytest.fixture(scope="module")
def folder_tool():
    return load_script(SCRIPT, "dataset_folder")


def test_a_failed_fill_leaves_the_output_as_it_was(folder_tool, tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "old.txt").write_text("old")

    def fill(folder: Path) -> None:
        (folder / "README.md").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        folder_tool.write_dataset_folder(out, True, fill)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"], "a temporary folder was left behind"
    assert [p.name for p in out.iterdir()] == ["old.txt"]


def test_overwrite_replaces_and_refusal_keeps(folder_tool, tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(folder_tool.OutputDirError, match="--overwrite"):
        folder_tool.write_dataset_folder(out, False, lambda folder: (folder / "README.md").write_text("new"))
    assert [p.name for p in out.iterdir()] == ["old.txt"]

    folder_tool.write_dataset_folder(out, True, lambda folder: (folder / "README.md").write_text("new"))
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "data"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_run_build_exit_status(folder_tool, tmp_path, capsys):
    assert folder_tool.run_build(lambda: tmp_path, (ValueError,)) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path)

    def refused():
        raise ValueError("bad photo")

    assert folder_tool.run_build(refused, (ValueError,)) == 2
    assert capsys.readouterr().err.strip() == "error: ValueError: bad photo"
    with pytest.raises(KeyError):  # an error the builder did not declare is a bug, not a user's mistake
        folder_tool.run_build(lambda: {}["x"], (ValueError,))
