"""The GP benchmark's headline case against GPyTorch, for this release or the previous one.

The case is ``benchmarks/gp.py``'s headline (SVGP, N = 20,000, D = 8, M = 256, batch 1,024,
300 steps in lockstep with GPyTorch), timed in thread CPU time on one thread. ``cur`` runs
this release through ``benchmarks/gp.py`` unchanged; ``prev`` runs the previous release
(``e7848cd``, unpacked into ``/tmp/prev``) through its own API, ``-model.elbo(x, y) / N``.
Alternating the two in separate processes, from the repository root::

    git archive e7848cd src | tar -x -C /tmp/prev
    for r in 1 2 3; do for w in cur prev; do
        python benchmarks/results/2026-12-08-gp-headline-ab.py $w
    done; done
"""

from __future__ import annotations

import pathlib
import sys
import types

PREVIOUS_SRC = "/tmp/prev/src"


def main() -> None:
    which = sys.argv[1]
    if which not in ("cur", "prev"):
        raise SystemExit("usage: 2026-12-08-gp-headline-ab.py cur|prev")
    if which == "prev":
        sys.path.insert(0, PREVIOUS_SRC)
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    import torch

    import gp as bench
    import vitorch
    from vitorch.models import gp

    import _harness

    if (which == "prev") != vitorch.__file__.startswith(PREVIOUS_SRC):
        raise SystemExit(f"imported the wrong vitorch: {vitorch.__file__}")
    if which == "prev":

        def vitorch_model(z, d, n):
            kernel = gp.RBF(lengthscale=torch.ones(d), variance=1.0)
            model = gp.SVGP(kernel, z, gp.GaussianLikelihood(noise=bench.NOISE0), num_data=n, jitter=bench.JITTER)
            opt = torch.optim.Adam(model.parameters(), lr=bench.LR)

            def step(xb, yb):
                opt.zero_grad(set_to_none=True)
                (-model.elbo(xb, yb) / n).backward()
                opt.step()

            def evaluate(x, y):
                with torch.no_grad():
                    mean, var = model.predict_y(x)
                    return float(gp.gaussian_nlpd(y, mean, var)), float(gp.rmse(y, mean))

            return step, evaluate

        bench.vitorch_model = vitorch_model
    _harness.setup(types.SimpleNamespace(cpu_time=True, threads=1))
    torch.set_default_dtype(torch.float32)
    gpytorch, why = _harness.try_import("gpytorch")
    bench.run_case(f"svgp_N20000_D8_M256_B1024/{which}", 20000, 8, 256, 1024, 300, gpytorch, why)


if __name__ == "__main__":
    main()
