"""Checks that keep the documentation site from rotting between `mkdocs build --strict` runs.

The strict build itself (run in CI as its own step) catches broken links and docstring
warnings; these tests catch what it does not: a page left out of the navigation, an API
page missing for a public module, a page whose code blocks no longer run top to bottom, and a
broken ``scripts/measure_estimators.py`` (the source of the numbers on the choosing page).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import textwrap
import warnings
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
    "vitorch.sbi",
]

# Pages whose Python blocks another test already runs (skipped by the page test below so
# they do not run twice). Each of those tests checks more than "the blocks run".
RUN_ELSEWHERE = {
    "errors.md": "tests/training/test_errors_doc.py (also checks every documented error row)",
    "testing.md": "tests/testing/test_testing_docs.py (also runs the tests the page defines)",
    "model.md": "tests/model/test_model_docs.py (each block is a complete program)",
    "particles.md": "tests/particles/test_particles_docs.py (each block is a complete program)",
}

# Pages whose blocks do not run yet, with the reason (kept short-lived: fix the page, drop the entry).
KNOWN_BROKEN: dict[str, str] = {}


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


_BLOCK = re.compile(r"^([ \t]*)```python[ \t]*\n(.*?)^\1```", re.S | re.M)


def python_blocks(page: Path) -> list[str]:
    """The ```python blocks of a page, in order (indented ones, e.g. inside an admonition, dedented)."""
    return [textwrap.dedent(b) for _, b in _BLOCK.findall(page.read_text())]


def _pages():
    for page in sorted(DOCS.rglob("*.md")):
        name = page.relative_to(DOCS).as_posix()
        if not python_blocks(page):
            continue
        marks = []
        if name in RUN_ELSEWHERE:
            marks.append(pytest.mark.skip(reason=f"run by {RUN_ELSEWHERE[name]}"))
        if name in KNOWN_BROKEN:
            marks.append(pytest.mark.xfail(reason=KNOWN_BROKEN[name], strict=False))
        yield pytest.param(page, id=name, marks=marks)


@pytest.mark.parametrize("page", list(_pages()))
def test_every_python_block_of_the_page_runs_top_to_bottom(page, tmp_path, monkeypatch):
    # A reader copies the page top to bottom: one fresh namespace per page, blocks in order.
    # In this process (a subprocess per page would add seconds of imports to each), with the
    # global state a page may change (default dtype, threads, RNG, figures) restored after it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    monkeypatch.chdir(tmp_path)  # files a page writes land in a scratch folder
    dtype, threads, rng = torch.get_default_dtype(), torch.get_num_threads(), torch.get_rng_state()
    namespace = {"__name__": "__main__"}
    torch.set_default_dtype(torch.float32)  # as a reader runs it (the test session defaults to float64)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i, code in enumerate(python_blocks(page)):
                try:
                    exec(compile(code, f"{page} (python block {i})", "exec"), namespace)
                except Exception as error:
                    raise AssertionError(f"python block {i} of {page.relative_to(DOCS)} failed: {error!r}") from error
    finally:
        torch.set_default_dtype(dtype)
        torch.set_num_threads(threads)
        torch.set_rng_state(rng)
        plt.close("all")


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
