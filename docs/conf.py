"""Sphinx configuration of the sglkit documentation site (``make docs``: HTML in docs/_build/html, warnings as errors).

Before Sphinx reads anything, this file prepares the pages that come from elsewhere (all git-ignored, see
docs/.gitignore): the notebooks of ../notebooks are copied into docs/notebooks/ with an ordered index page
(myst-nb renders their stored outputs, nothing is executed), and the reference pages are generated from the
code by ../scripts/gen_reference.py (server arguments, sampling parameters, HTTP API).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gen_reference  # noqa: E402  (scripts/gen_reference.py)

import sglkit  # noqa: E402

# The notebooks in reading order; any others follow alphabetically.
NOTEBOOK_ORDER = [
    "quick_start",
    "native_api",
    "openai_api",
    "embeddings",
    "reward_model",
    "sampling_params",
    "structured_outputs",
    "tool_calling",
    "reasoning",
    "frontend_language",
    "offline_engine",
    "radix_cache",
    "widgets_dashboard",
    "parallelism",
    "benchmarking",
]
NOTEBOOKS_INDEX = """# Notebooks

Every page here is a notebook from the repository's `notebooks/` folder, shown with the outputs stored when it
last ran; CI executes each of them top to bottom on a CPU. Open them in Jupyter to run them yourself.

```{toctree}
:maxdepth: 1

"""


def sync_notebooks(src: Path, dst: Path) -> list[str]:
    """Copy ``src/*.ipynb`` into ``dst`` (removing stale copies) and write ``dst/index.md``; the page names.

    Links into the docs folder (``../docs/x.md``) are rewritten to stay valid from ``docs/notebooks/``.
    """
    dst.mkdir(exist_ok=True)
    available = {p.stem: p for p in src.glob("*.ipynb")}
    for stale in dst.glob("*.ipynb"):
        if stale.stem not in available:
            stale.unlink()
    for path in available.values():
        text = path.read_text(encoding="utf-8").replace("](../docs/", "](../")
        gen_reference.write_if_changed(dst / path.name, text)
    names = [n for n in NOTEBOOK_ORDER if n in available] + sorted(set(available) - set(NOTEBOOK_ORDER))
    gen_reference.write_if_changed(
        dst / "index.md", NOTEBOOKS_INDEX + "".join(f"{n}\n" for n in names) + "```\n"
    )
    return names


sync_notebooks(ROOT / "notebooks", DOCS / "notebooks")
gen_reference.write_reference_pages(DOCS / "reference")

project = "sglkit"
author = "sglkit contributors"
copyright = "sglkit contributors"
version = release = sglkit.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
root_doc = "index"
exclude_patterns = ["_build", "**/.ipynb_checkpoints", ".gitignore"]

# myst-nb: render notebooks with their stored outputs; never execute them here (CI executes them with nbval).
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["colon_fence", "deflist", "fieldlist"]
myst_heading_anchors = 3

# autodoc: the Python API page documents what users import.
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autodoc_default_options = {"members": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "furo"
html_title = f"sglkit {release}"
html_static_path: list[str] = []
html_show_sourcelink = False


OUTSIDE_LINK = re.compile(r"\[([^\]]+)\]\(\.\./[^)]*\)")


def unlink_outside_repository(app, relative_path: Path, parent_docname: str, content: list[str]) -> None:
    """README.md, included by index.md: a link that leaves the repository (``../x``) becomes its plain label."""
    if Path(relative_path).name == "README.md":
        content[0] = OUTSIDE_LINK.sub(r"\1", content[0])


def always_reread_python_api(app, env, added, changed, removed) -> list[str]:
    """Sphinx does not notice docstring edits; re-read the autodoc page on every build (it is cheap)."""
    return ["reference/python_api"]


def setup(app) -> dict:
    """Local hooks."""
    app.connect("include-read", unlink_outside_repository)
    app.connect("env-get-outdated", always_reread_python_api)
    return {"parallel_read_safe": True}
