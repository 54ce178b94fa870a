"""The README's Python examples run as written: each ```python block in a fresh interpreter, offline.

Each block runs as its own script in an empty temporary working directory, with the Hub, datasets, evaluate and
transformers offline and one thread, exactly as a user would paste it into a file. A block that cannot run
offline by nature (it writes to a real Hub repo) says so on its first line, `# needs a Hub login`; it is only
checked to parse, and the number of such blocks is pinned, so that no example quietly stops being run.
"""

import os

OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_EVALUATE_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}
os.environ.update(OFFLINE)  # as tests/conftest.py: before any import that may reach the Hub

import ast  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"
NEEDS_LOGIN = "# needs a Hub login"
EXPECTED_RUNNABLE = 4  # φ load/save, attach, mean mode, Trainer
EXPECTED_NEEDS_LOGIN = 1  # push_to_hub
BLOCK_TIMEOUT_S = 300  # each block takes seconds; this only stops a hang
DONE = "README example ran to its end"

_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def readme_blocks() -> list[tuple[int, str]]:
    """(line number of the opening fence, code) of every ```python block of the README, in order."""
    text = README.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in _FENCE.finditer(text)]


def needs_login(code: str) -> bool:
    return code.lstrip().startswith(NEEDS_LOGIN)


BLOCKS = readme_blocks()


def test_the_readme_examples_are_all_accounted_for():
    runnable = [line for line, code in BLOCKS if not needs_login(code)]
    skipped = [line for line, code in BLOCKS if needs_login(code)]
    assert len(runnable) == EXPECTED_RUNNABLE, f"runnable python blocks at README lines {runnable}"
    assert len(skipped) == EXPECTED_NEEDS_LOGIN, f"'{NEEDS_LOGIN}' blocks at README lines {skipped}"
    for line, code in BLOCKS:  # a marker anywhere but the first line would not be honoured: keep it visible
        assert needs_login(code) or NEEDS_LOGIN not in code, f"README line {line}: the marker must be the first line"


@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"README-line-{line}" for line, _ in BLOCKS])
def test_readme_example_runs(line, code, tmp_path):
    ast.parse(code, filename=f"README.md:{line}")  # every block is valid Python, the skipped ones included
    if needs_login(code):
        pytest.skip(f"README line {line}: {NEEDS_LOGIN}")
    script = tmp_path / f"readme_line_{line}.py"
    # the marker printed after the block catches an example cut short with exit status 0 (`raise SystemExit`)
    script.write_text(f"{code}\nprint({DONE!r})\n", encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, **OFFLINE, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)  # the installed package, as a user has it
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0 and done.stdout.rstrip().endswith(DONE), (
        f"the README's example at line {line} failed (exit {done.returncode}, "
        f"{'ran' if DONE in done.stdout else 'did not run'} to its end):\n"
        f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    )
