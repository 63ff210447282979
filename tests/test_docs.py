"""Checks that keep the documentation site from rotting between `mkdocs build --strict` runs.

The strict build itself (run in CI as its own step) catches broken links and docstring
warnings; these tests catch what it does not: a page left out of the navigation, an API
page missing for a public module, a self-contained code snippet that no longer runs, and a
broken ``scripts/measure_estimators.py`` (the source of the numbers on the choosing page).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

# Public modules that must each have a mkdocstrings directive on some API page.
PUBLIC_MODULES = [
    "vitorch.loss",
    "vitorch.expect",
    "vitorch.testing",
    "vitorch.model",
    "vitorch.objectives",
    "vitorch.estimators",
    "vitorch.mmd",
    "vitorch.diagnostics",
    "vitorch.families.gaussian",
    "vitorch.families.flow",
    "vitorch.families.gamma",
    "vitorch.families.beta",
    "vitorch.families.dirichlet",
    "vitorch.families.heads",
    "vitorch.flows",
    "vitorch.training",
    "vitorch.data",
    "vitorch.models.vae",
    "vitorch.models.last_layer",
    "vitorch.models.gp",
    "vitorch.models.ssm",
    "vitorch.kernels",
    "vitorch.quadrature",
    "vitorch.unscented",
    "vitorch.silent",
    "vitorch.families.wasserstein",
    "vitorch.families.mixflow",
    "vitorch.families.concrete",
    "vitorch.particles",
    "vitorch.gvi",
    "vitorch.optim",
]

# Pages whose code blocks starting with an import are complete programs.
SNIPPET_PAGES = [
    "index.md",
    "training.md",
    "errors.md",
    "mixflows.md",
    *(f"concepts/{p.name}" for p in sorted((DOCS / "concepts").glob("*.md"))),
]


def _nav_pages() -> set[str]:
    """Every ``*.md`` named under ``nav:`` in mkdocs.yml (read as text: no YAML dependency in the tests)."""
    text = (ROOT / "mkdocs.yml").read_text()
    nav = text[text.index("\nnav:") :]
    return set(re.findall(r"^\s*-\s*(?:[^:\n]*:\s*)?([\w/.-]+\.md)\s*$", nav, re.M))


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    nav = _nav_pages()
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert pages - nav == set(), f"pages missing from the nav in mkdocs.yml: {sorted(pages - nav)}"
    assert nav - pages == set(), f"nav entries with no page: {sorted(nav - pages)}"


def test_every_public_module_has_an_api_page():
    directives = set()
    for page in (DOCS / "api").glob("*.md"):
        directives |= set(re.findall(r"^::: ([\w.]+)", page.read_text(), re.M))
    documented = {m for m in PUBLIC_MODULES if any(d == m or d.startswith(m + ".") for d in directives)}
    assert documented == set(PUBLIC_MODULES), f"no API page for {sorted(set(PUBLIC_MODULES) - documented)}"


def test_every_image_in_the_docs_exists():
    missing = []
    for page in DOCS.rglob("*.md"):
        for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", page.read_text()):
            if not target.startswith("http") and not (page.parent / target).resolve().is_file():
                missing.append(f"{page.relative_to(DOCS)}: {target}")
    assert missing == []


def _snippets():
    for name in SNIPPET_PAGES:
        blocks = re.findall(r"```python\n(.*?)```", (DOCS / name).read_text(), re.S)
        for i, block in enumerate(b for b in blocks if b.startswith("import")):
            yield pytest.param(block, id=f"{name}#{i}")


@pytest.mark.parametrize("code", list(_snippets()))
def test_self_contained_snippets_run(code):
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, "<docs snippet>", "exec"), {})


def test_measure_estimators_quick_produces_every_table_row(tmp_path):
    spec = importlib.util.spec_from_file_location("measure_estimators", ROOT / "scripts" / "measure_estimators.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "table.md"
    with contextlib.redirect_stdout(io.StringIO()):
        module.main(["--quick", "--offsets", "0.5", "--out", str(out)])
    text = out.read_text()
    for row in ("| ELBO |", "| IWAE |", "| CUBO₂ (upper) |", "| ELBO · stl |", "| IWAE · dreg |", "| IWAE · vimco |"):
        assert row in text, f"{row} missing from the generated table"
    # Refused combinations are reported, never given numbers: STL on IWAE at every K.
    iwae_stl = [line for line in text.splitlines() if line.startswith("| IWAE · stl |")]
    assert iwae_stl and all(line.count("refused") == 4 for line in iwae_stl)


def test_the_docs_load_nothing_from_the_network():
    # Maths must render offline: MathJax ships with the docs, and no page script comes from a CDN.
    config = (ROOT / "mkdocs.yml").read_text()
    scripts = config[config.index("extra_javascript:") :].split("\n\n")[0]
    assert "http" not in scripts, scripts
    for line in re.findall(r"^\s*-\s*(\S+\.js)\s*$", scripts, re.M):
        assert (DOCS / line).is_file(), f"{line} is named in mkdocs.yml but not in docs/"
