"""The documentation site (docs/): Sphinx builds it with warnings as errors, and the pages generated from the
code (scripts/gen_reference.py) cover every server argument, sampling parameter and route.

This is how ``make test`` builds the docs (``make docs`` runs the same build into docs/_build/html).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import gen_reference  # noqa: E402

from sglkit.core.sampling_params import SamplingParams  # noqa: E402
from sglkit.server_args import ServerArgs  # noqa: E402

REFERENCE_PAGES = ["index", "server_arguments", "sampling_params", "http_api", "python_api"]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The HTML site, built once into a temporary folder with ``-W`` (any warning fails the build)."""
    out = tmp_path_factory.mktemp("docs")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "sphinx",
        "-W",
        "--keep-going",
        "-q",
        "-b",
        "html",
        "-d",
        str(out / "doctrees"),
        str(ROOT / "docs"),
        str(out / "html"),
    ]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"sphinx-build failed:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
    return out / "html"


@pytest.mark.slow
def test_site_has_the_key_pages(site: Path) -> None:
    """Index, reference pages, benchmarks and the notebooks index are all there."""
    for page in [
        "index.html",
        "benchmarks.html",
        "notebooks/index.html",
        *(f"reference/{name}.html" for name in REFERENCE_PAGES),
    ]:
        assert (site / page).is_file(), page
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first_section = next(line[3:].strip() for line in readme.splitlines() if line.startswith("## "))
    assert first_section in (site / "index.html").read_text(encoding="utf-8")  # the index shows the README


@pytest.mark.slow
def test_every_notebook_is_a_page_with_its_stored_outputs(site: Path) -> None:
    """Each notebooks/*.ipynb becomes notebooks/<name>.html, listed on the notebooks index, outputs included."""
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks
    index = (site / "notebooks" / "index.html").read_text(encoding="utf-8")
    for nb in notebooks:
        page = site / "notebooks" / f"{nb.stem}.html"
        assert page.is_file(), page
        assert f"{nb.stem}.html" in index
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        if any(cell.get("outputs") for cell in cells):
            assert "cell_output" in page.read_text(encoding="utf-8"), (
                f"{nb.name}: stored outputs not rendered"
            )


@pytest.mark.slow
def test_python_api_page_documents_the_public_modules(site: Path) -> None:
    """autodoc picked up the Engine, the notebook helpers, the widgets and the test models."""
    text = (site / "reference" / "python_api.html").read_text(encoding="utf-8")
    for name in [
        "sglkit.Engine",
        "wait_for_server",
        "launch_server_cmd",
        "terminate_process",
        "ServerDashboard",
        "make_tiny_model",
        "SamplingParams",
    ]:
        assert name in text, name


def test_server_arguments_page_lists_every_flag() -> None:
    """One row per ServerArgs field, under its argparse flag (and its aliases), with its help text."""
    page = gen_reference.server_arguments_page()
    for f in dataclasses.fields(ServerArgs):
        flag = "--" + f.name.replace("_", "-")
        assert f"| `{flag}` |" in page or f"| `{flag}`/" in page, flag  # "`--tp-size`/`--tp`" with an alias
        assert f.metadata["help"].split(".")[0] in page
    assert "## Model and tokenizer" in page  # sections come from the dataclass's comments


def test_sampling_params_page_lists_every_field_with_verify_ranges() -> None:
    """One row per SamplingParams field; ranges are SamplingParams.verify's own messages."""
    page = gen_reference.sampling_params_page()
    for f in dataclasses.fields(SamplingParams):
        assert f"| `{f.name}` |" in page, f.name
    assert "must be in (0, 1]" in page  # top_p
    assert "must be token ids in [0, vocab_size)" in page  # stop_token_ids
    assert "`seed`" in page and "`max_tokens`" in page  # OpenAI names


def test_http_api_page_lists_every_route_and_body() -> None:
    """Every path of the app's OpenAPI schema is on the page; request bodies have field tables."""
    schema = gen_reference.openapi_schema()
    page = gen_reference.http_api_page()
    for path in schema["paths"]:
        assert f" {path}`" in page, path
    for name in ["GenerateReqInput", "ChatCompletionRequest", "CompletionRequest", "EmbeddingRequest"]:
        assert f"### {name}" in page, name
    assert "| `messages` | array[[ChatMessage](#chatmessage)] | required |" in page
