"""docs/recipes.md documents every flag of both recipes, each in its recipe's section: a flag added to a parser
without a line in the docs fails here."""

import re
from pathlib import Path

import pytest
from _builders import load_script

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "recipes.md"
# (recipe, the heading its section starts at, the heading of the section after it)
SECTIONS = [
    ("transfer", "## Transfer", "## Meta-training φ"),
    ("meta_train", "## Meta-training φ", "## In your own `Trainer`"),
]


def section(start: str, end: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    begin, stop = text.find(f"\n{start}"), text.find(f"\n{end}")
    assert 0 <= begin < stop, f"docs/recipes.md has no section from {start!r} to {end!r}: update SECTIONS"
    return text[begin:stop]


def flags(recipe: str) -> set[str]:
    parser = load_script(ROOT / "recipes" / f"{recipe}.py", f"{recipe}_recipe_flags").build_parser()
    return {opt for action in parser._actions for opt in action.option_strings if opt.startswith("--")} - {"--help"}


@pytest.mark.parametrize("recipe, start, end", SECTIONS, ids=[s[0] for s in SECTIONS])
def test_every_flag_is_documented(recipe, start, end):
    documented = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_]*", section(start, end)))
    assert sorted(flags(recipe) - documented) == []
