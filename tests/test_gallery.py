"""The gallery page is generated from the examples' smoke runs (``scripts/gallery.py``):
every example has its section, and every picture the page shows exists."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "gallery.md"


def test_every_example_has_a_gallery_section():
    text = PAGE.read_text()
    scripts = sorted((ROOT / "examples").glob("*.py"))
    missing = [s.name for s in scripts if f"`python examples/{s.name} --quick`" not in text]
    assert not missing, f"examples without a gallery section (run python scripts/gallery.py --only ...): {missing}"


def test_every_gallery_picture_exists():
    pictures = re.findall(r"\]\((assets/gallery/[^)]+)\)", PAGE.read_text())
    assert pictures, "the gallery shows no pictures"
    absent = [p for p in pictures if not (ROOT / "docs" / p).is_file()]
    assert not absent, f"gallery pictures missing: {absent}"
