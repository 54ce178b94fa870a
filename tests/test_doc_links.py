"""The user documentation's cross-references resolve: every relative link of README.md and docs/*.md names a
file of the repository and, with `#anchor`, a heading of that file; every results record it names as
`benchmarks/results/<name>.json` exists.

A section removed or renamed by an edit elsewhere leaves links to it that GitHub renders as dead: this is where
that shows.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Records the docs name as what a command will write, not as measured: gpu.sh has not run on a GPU yet.
NOT_YET_WRITTEN = {"benchmarks/results/gpu-overhead.json"}

_LINK = re.compile(r"\]\(([^)\s]+)\)")
_RECORD = re.compile(r"`(benchmarks/results/[^`]+\.json)`")
_HEADING = re.compile(r"#{1,6} (.+)")


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation but `-` and `_` dropped, spaces to `-`."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, repeats numbered as GitHub does (`name`, `name-1`, ...)."""
    found, seen, in_code = set(), {}, False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (m := _HEADING.match(line)):
            anchor = github_anchor(m.group(1))
            found.add(f"{anchor}-{seen[anchor]}" if anchor in seen else anchor)
            seen[anchor] = seen.get(anchor, 0) + 1
    return found


def dead_links(doc: Path) -> list[str]:
    dead = []
    for target in _LINK.findall(doc.read_text(encoding="utf-8")):
        if re.match(r"[a-z][a-z+.-]*:", target):  # https:, mailto:, ...
            continue
        path, _, anchor = target.partition("#")
        linked = (doc.parent / path) if path else doc
        if not linked.exists():
            dead.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            dead.append(f"{target}: no heading with that anchor in {linked.relative_to(ROOT)}")
    return dead


def missing_records(doc: Path) -> list[str]:
    named = set(_RECORD.findall(doc.read_text(encoding="utf-8")))
    shapes = {r for r in named if "..." in r or any(c in r for c in "<*{")}  # a name's shape, not a file
    return sorted(r for r in named - NOT_YET_WRITTEN - shapes if not (ROOT / r).exists())


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(doc):
    assert dead_links(doc) == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_records_exist(doc):
    assert missing_records(doc) == []


def test_not_yet_written_records_are_still_missing():
    # once gpu.sh has run and its record is committed, the exemption must go
    assert not any((ROOT / r).exists() for r in NOT_YET_WRITTEN)


def test_github_anchor_rules():
    assert github_anchor("The recipe's no-flag job (`benchmarks/default_job.py`)") == (
        "the-recipes-no-flag-job-benchmarksdefault_jobpy"
    )
    assert github_anchor("φ: load, inspect, save") == "φ-load-inspect-save"


def test_checker_reports_a_dead_anchor_and_file(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    (tmp_path / "other.md").write_text("# Present\n\n## Twice\n\n## Twice\n", encoding="utf-8")
    doc = tmp_path / "doc.md"
    doc.write_text(
        "[a](other.md#present) [b](other.md#twice-1) [c](other.md#gone) [d](nowhere.md) [e](https://x.org/#y)\n"
        "`benchmarks/results/absent.json` `benchmarks/results/<name>.json` `benchmarks/results/robustness-*.json`\n",
        encoding="utf-8",
    )
    assert dead_links(doc) == [
        "other.md#gone: no heading with that anchor in other.md",
        "nowhere.md: no such file",
    ]
    assert missing_records(doc) == ["benchmarks/results/absent.json"]
