"""Rebuild the docs gallery from the examples' own smoke runs.

Runs every ``examples/*.py`` with ``--quick --out <scratch>``, copies the pictures each run
wrote into ``docs/assets/gallery/`` (scaled to at most 1000 px wide and stored with a 256-colour
palette, so the repository stays small) and writes ``docs/gallery.md``: per example, its
one-line summary, the command, the metrics line it printed and its pictures.  The gallery
therefore always shows what the code makes today; ``tests/test_gallery.py`` checks that
every example has its section and every picture exists.

    python scripts/gallery.py                 # every example (a few minutes on two cores)
    python scripts/gallery.py --only vae      # rebuild one example's section
    python scripts/gallery.py --jobs 2        # two examples at a time
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
ASSETS = ROOT / "docs" / "assets" / "gallery"
PAGE = ROOT / "docs" / "gallery.md"
RECORD = ASSETS / "runs.json"  # each example's last run: metrics and figures, so --only keeps the rest
MAX_WIDTH = 1000
MAX_FIGURES = 4

HEADER = """# Gallery

Every example's pictures as its smoke run (`--quick`) draws them today. This page is generated:
`python scripts/gallery.py` runs each command shown below with `--out` pointing to a scratch
directory, copies the figures here and records the metrics line each run printed last. A smoke
run trains for seconds, so its numbers show that the script works, not how well the method does
(its metrics line says `"quick_smoke_run_not_converged": true`); run a script without `--quick`
for the results discussed in the guides.
"""


def summary(script: pathlib.Path) -> str:
    """The first line of the example's module docstring."""
    doc = ast.get_docstring(ast.parse(script.read_text())) or script.stem
    return doc.strip().splitlines()[0].rstrip(".")


def shrink(src: pathlib.Path, dst: pathlib.Path) -> None:
    """Copy a PNG at most ``MAX_WIDTH`` wide with a 256-colour palette (Pillow ships with matplotlib)."""
    from PIL import Image

    with Image.open(src) as image:
        image = image.convert("RGB")
        if image.width > MAX_WIDTH:
            image = image.resize((MAX_WIDTH, round(image.height * MAX_WIDTH / image.width)), Image.LANCZOS)
        image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(dst, optimize=True)


def run(script: pathlib.Path) -> dict:
    """Smoke-run one example; return its metrics and the gallery names of its figures."""
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    with tempfile.TemporaryDirectory() as scratch:
        proc = subprocess.run(
            [sys.executable, str(script), "--quick", "--out", scratch],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{script.name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        metrics = json.loads([line for line in proc.stdout.splitlines() if line.strip()][-1])
        figures = []
        for png in sorted(pathlib.Path(scratch).rglob("*.png"))[:MAX_FIGURES]:
            name = f"{script.stem}-{png.stem}.png"
            shrink(png, ASSETS / name)
            figures.append(name)
    return {"metrics": metrics, "figures": figures}


def _short(value):
    """Numbers to four significant digits, recursively (the metrics line keeps full precision)."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: _short(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_short(v) for v in value]
    return value


def section(script: pathlib.Path, record: dict) -> str:
    items = sorted(record["metrics"].items())  # the same order whether fresh or read back from runs.json
    metrics = ", ".join(
        f"`{k}`: {_short(v)}" for k, v in items if k not in ("quick_smoke_run_not_converged", "example")
    )
    lines = [f"## {summary(script)}", "", f"`python examples/{script.name} --quick`", "", f"Metrics: {metrics}.", ""]
    lines += [f"![{script.stem}](assets/gallery/{name})" for name in record["figures"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", default=None, help="example names (without .py) to rerun")
    p.add_argument("--jobs", type=int, default=1, help="examples run at the same time")
    p.add_argument("--page-only", action="store_true", help="rewrite the page from the recorded runs, run nothing")
    args = p.parse_args()
    if args.page_only:
        records = json.loads(RECORD.read_text())
        scripts = sorted(EXAMPLES.glob("*.py"))
        PAGE.write_text(HEADER + "\n" + "\n".join(section(s, records[s.stem]) for s in scripts if s.stem in records))
        return
    scripts = sorted(EXAMPLES.glob("*.py"))
    chosen = [s for s in scripts if args.only is None or s.stem in args.only]
    ASSETS.mkdir(parents=True, exist_ok=True)
    records = json.loads(RECORD.read_text()) if RECORD.exists() else {}
    if args.only is None:  # a full rebuild drops pictures of examples that no longer exist
        shutil.rmtree(ASSETS)
        ASSETS.mkdir(parents=True)
        records = {}
    with ThreadPoolExecutor(args.jobs) as pool:
        for script, record in zip(chosen, pool.map(run, chosen)):
            print(f"{script.name}: {len(record['figures'])} figure(s)", flush=True)
            records[script.stem] = {**record, "date": datetime.date.today().isoformat()}
    RECORD.write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")
    body = [section(s, records[s.stem]) for s in scripts if s.stem in records]
    PAGE.write_text(HEADER + "\n" + "\n".join(body))


if __name__ == "__main__":
    main()
