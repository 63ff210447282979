"""Print the objective x estimator table of README.md from vt.check itself.

    python scripts/objective_matrix.py          # print the table
    python scripts/objective_matrix.py --write  # replace it in README.md

tests/test_readme_matrix.py fails when README.md and this output differ.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import vitorch as vt

O, E = vt.objectives, vt.estimators
START, END = "<!-- objective-matrix:start -->", "<!-- objective-matrix:end -->"
README = Path(__file__).resolve().parent.parent / "README.md"


def _your_bound(log_w):
    return torch.logsumexp(log_w, 0)


ROWS = [
    ("elbo", O.elbo),
    ("iwae", O.iwae),
    ("miwae(2)", O.miwae(2)),
    ("ciwae(0.5)", O.ciwae(0.5)),
    ("renyi(0.5)", O.renyi(0.5)),
    ("cubo(2)", O.cubo(2)),
    ("piwae(2)", O.piwae(2)),
    ("vis()", O.vis()),
    ("a callable `log_w -> bound`", _your_bound),
]
COLUMNS = [
    ("reparam", E.reparam),
    ("stl", E.stl),
    ("dreg", E.dreg),
    ("score()", E.score()),
    ("score(baseline)", E.score(E.MovingAverageBaseline())),
    ("vimco", E.vimco),
]


def _reasons(objective, estimator, K: int) -> list[str]:
    q = vt.DiagNormal(torch.zeros(2), torch.ones(2))
    try:
        vt.check(q, K, objective, estimator)
    except ValueError as err:
        name = vt.objectives.as_objective(objective).name
        lines = str(err).split("\n  - ")[1:]
        return [line.replace(name, "the objective") for line in lines]
    return []


def table(K: int = 4) -> str:
    """The markdown table (K particles) and its footnotes."""
    notes: list[str] = []
    out = ["| | " + " | ".join(c for c, _ in COLUMNS) + " |", "| --- " * (len(COLUMNS) + 1) + "|"]
    for row, objective in ROWS:
        cells = []
        for _, estimator in COLUMNS:
            reasons = _reasons(objective, estimator, K)
            if not reasons:
                cells.append("✓")
                continue
            keys = []
            for reason in reasons:
                if reason not in notes:
                    notes.append(reason)
                keys.append(str(notes.index(reason) + 1))
            cells.append("✗ (" + ", ".join(keys) + ")")
        out.append(f"| {row} | " + " | ".join(cells) + " |")
    out.append("")
    out += [f"({i}) {note}" for i, note in enumerate(notes, 1)]
    k1 = _reasons(O.iwae, E.vimco, 1)
    out.append("")
    out.append(f"At K = 1: {k1[0]}." if k1 else "")
    return "\n".join(out).rstrip() + "\n"


def readme_section(text: str) -> str:
    i, j = text.index(START) + len(START), text.index(END)
    return text[i:j].strip("\n") + "\n"


if __name__ == "__main__":
    generated = table()
    if "--write" in sys.argv:
        text = README.read_text()
        i, j = text.index(START) + len(START), text.index(END)
        README.write_text(text[:i] + "\n" + generated + text[j:])
    else:
        print(generated, end="")
