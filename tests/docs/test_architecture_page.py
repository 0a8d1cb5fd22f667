"""docs/architecture.md cannot go stale: every `path::Symbol` it names is a file that defines that symbol."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "architecture.md"
REFERENCE = re.compile(r"`([\w/]+\.py)::([\w.]+)`")


def defined_names(path: Path) -> set[str]:
    """Top-level functions/classes, and Class.method for methods, of a Python file."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    names.add(f"{node.name}.{item.name}")
    return names


REFERENCES = REFERENCE.findall(PAGE.read_text())


def test_page_names_the_hops():
    assert len(REFERENCES) >= 25
    steps = re.findall(r"^(\d+)\. `", PAGE.read_text(), flags=re.MULTILINE)
    assert [int(s) for s in steps] == list(range(1, len(steps) + 1))


@pytest.mark.parametrize("path,symbol", sorted(set(REFERENCES)))
def test_reference_exists(path, symbol):
    file = ROOT / path
    assert file.is_file(), f"docs/architecture.md names {path}, which does not exist"
    assert symbol in defined_names(file), f"docs/architecture.md names {symbol}, which {path} does not define"
