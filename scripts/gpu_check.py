"""The GPU check: everything vitorch wants to know from the first minutes on a GPU, in one JSON file.

Steps, each with its own time limit so that one stuck step cannot eat the rest:

1. ``parity``: the Triton kernels against their torch references on CUDA, forward and
   backward, in float32, float16 and bfloat16 (``pytest -m gpu tests/kernels``);
2. ``compile``: every Triton kernel compiles for the device, and ``torch.compile`` of the
   references runs (``tests/kernels/test_kernels_compile.py``);
3. ``bench``: ``benchmarks/kernels.py``: each kernel's time and achieved bandwidth beside a
   device-to-device copy measured in the same run, against eager and ``torch.compile`` of its
   reference, and the end-to-end IWAE (K = 50) VAE step with the kernels on and off;
4. ``targets``: the bench lines read against the kernels' targets (memory-bound kernels at
   >= 80 % of copy bandwidth; the diagonal-Gaussian sample + log-prob kernel >= 3x eager
   forward+backward; the IWAE-50 step >= 1.5x eager and >= 1.0x ``torch.compile``).

The results go to ``<out>/gpu-check-<gpu name>-<date>.json`` (the GPU's name made
file-safe), with the torch, Triton and CUDA versions.  ``--dry-run`` runs the parity and bench
steps on the CPU under the Triton interpreter at the smallest sizes (float32 only; the compile
check is already a step of the CPU test run), so CI proves the script works without a GPU; its
file is named ``gpu-check-dry-run-<date>.json``.

    bash scripts/gpu_check.sh                     # on a GPU machine, ~5-8 minutes
    bash scripts/gpu_check.sh --dry-run           # anywhere, a few minutes: a few kernels, one case each
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Targets for the kernels (see docs/kernels.md): the bench case names they read.
COPY_FRACTION = 0.8
GAUSSIAN_VS_EAGER = 3.0
IWAE_VS_EAGER, IWAE_VS_COMPILE = 1.5, 1.0


def run(name: str, cmd: list[str], env: dict, limit: int) -> dict:
    """Run one step; keep its exit status, its time, a pytest summary line and its JSON lines."""
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        rc, out = "timeout", (err.stdout or b"").decode(errors="replace") if isinstance(err.stdout, bytes) else ""
    seconds = round(time.monotonic() - start, 1)
    lines = []
    for line in out.splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    summary = [line for line in out.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", line)]
    print(f"[{name}] rc={rc} in {seconds} s {summary[-1] if summary else ''}", flush=True)
    return {
        "command": " ".join(cmd),
        "returncode": rc,
        "seconds": seconds,
        "summary": summary[-1] if summary else None,
        "json_lines": lines,
        "tail": out[-3000:] if rc not in (0, 5) else "",
    }


def targets(bench: list[dict]) -> dict:
    """Each kernel target, met or not, from the bench's JSON lines (None where the case did not run)."""
    out = {}
    for line in bench:
        case, ratio = line.get("case", ""), line.get("ratio")
        if "fraction_of_copy" in line and line.get("peer") == "torch eager":
            out[f"bandwidth {case}"] = {"value": line["fraction_of_copy"], "target": COPY_FRACTION,
                                        "met": line["fraction_of_copy"] >= COPY_FRACTION}  # fmt: skip
        if case.startswith("diag_normal") and "fwd+bwd" in case and line.get("peer") == "torch eager":
            out[f"speed {case} vs eager"] = {"value": ratio, "target": GAUSSIAN_VS_EAGER,
                                             "met": ratio is not None and ratio >= GAUSSIAN_VS_EAGER}  # fmt: skip
        if (
            case.startswith("vae iwae")
            and case.endswith("step")
            and line.get("peer") in ("torch eager", "torch.compile")
        ):
            goal = IWAE_VS_EAGER if line["peer"] == "torch eager" else IWAE_VS_COMPILE
            out[f"speed {case} vs {line['peer']}"] = {"value": ratio, "target": goal,
                                                      "met": ratio is not None and ratio >= goal}  # fmt: skip
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, smallest sizes (for CI)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder of the results file")
    args = p.parse_args()

    import torch

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    env["PYTHONUNBUFFERED"] = "1"
    if args.dry_run:
        env["TRITON_INTERPRET"] = "1"
        gpu = "dry-run"
    else:
        if not torch.cuda.is_available():
            sys.exit("gpu_check: no CUDA device is visible; run with --dry-run to check the script on the CPU")
        env.pop("TRITON_INTERPRET", None)
        gpu = torch.cuda.get_device_name()
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        sys.exit("gpu_check: triton is not importable (pip install 'vitorch[gpu]')")

    py = sys.executable
    pytest = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts="]
    if args.dry_run:  # the interpreter path, float32, a few sizes: proves the steps run, times nothing
        parity = pytest + ["-m", "triton", "-k", "interpreter and float32 and (logsumexp or diag_normal)",
                           "tests/kernels/test_kernels_parity.py"]  # fmt: skip
        bench = [py, "benchmarks/kernels.py", "--smoke", "--ops", "diag_normal_rsample_and_log_prob"]
    else:
        parity = pytest + ["-m", "gpu", "tests/kernels"]
        bench = [py, "benchmarks/kernels.py"]
    steps = {"parity": run("parity", parity, env, 240)}
    if not args.dry_run:  # on the CPU the Triton test step already compiles every kernel for sm_90
        steps["compile"] = run("compile", pytest + ["-m", "triton", "tests/kernels/test_kernels_compile.py"], env, 120)
    steps["bench"] = run("bench", bench, env, 240)
    result = {
        "gpu": gpu,
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "python": platform.python_version(),
        "command": "bash scripts/gpu_check.sh" + (" --dry-run" if args.dry_run else ""),
        "steps": steps,
        "targets": targets(steps["bench"]["json_lines"]),
    }
    result["ok"] = all(s["returncode"] in (0, 5) for s in steps.values())
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", gpu).strip("-")
    path = Path(args.out) / f"gpu-check-{name}-{result['date']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"results written to {path}")
    print(json.dumps({"gpu": gpu, "ok": result["ok"], "targets_met": sum(t["met"] for t in result["targets"].values()),
                      "targets": len(result["targets"])}))  # fmt: skip
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
