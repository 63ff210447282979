"""Does mixed precision cost test log-likelihood?  The fused bfloat16 step against float32 torch.

``compile_step(model, autocast_dtype=torch.bfloat16)`` runs the VAE's matrix products in
bfloat16 and everything else in float32 (:mod:`vitorch.training.compile`).  Its speed is
in ``benchmarks/vae.py`` (``fused bf16`` rows); this script checks what it costs in model
quality.  For each particle seed, the 784-200-200-50 VAE (K=1, Adam 1e-3, batch 128,
Fashion-MNIST binarized at 0.5) is trained for ``--steps`` steps twice from the same
initial weights, minibatches and particle noise: by the hand-written float32 eager step
(the ``torch`` peer of ``benchmarks/vae.py``) and by vitorch's fused bfloat16 step.  Both
are scored in float32 by the IWAE bound at ``--particles`` on the first ``--images`` test
images with the same evaluation seed.  A line per seed, then a summary line with the mean
paired difference (bfloat16 minus float32) and its standard error over seeds; the seeds'
own spread shows the size of ordinary run-to-run variation.  Training times are single
sequential runs without their first (compiling) step, a record rather than a speed comparison.

    python benchmarks/vae_precision.py [--quick] [--threads 2]
"""

from __future__ import annotations

import statistics
import time

import torch

from vae import HIDDEN, LATENT, LR, Batches, HandVAE, _as_vae, _same_start, load, torch_step
from vitorch.models import vae
from vitorch.training.compile import compile_step

from _harness import parser, report, setup


def train(step, steps: int, seed: int) -> float:
    """Run ``steps`` steps; return the seconds of all but the first (which compiles the fused step)."""
    torch.manual_seed(seed)  # the same particle noise for both contestants
    step()
    t0 = time.perf_counter()
    for _ in range(steps - 1):
        step()
    return time.perf_counter() - t0


def score(model: vae.VAE, test: torch.Tensor, particles: int) -> float:
    torch.manual_seed(3)
    return float(vae.iwae_log_likelihood(model, test, num_particles=particles).mean())


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default 938: 2 epochs)")
    p.add_argument("--particles", type=int, default=None, help="IWAE particles of the test log-likelihood")
    p.add_argument("--images", type=int, default=None, help="test images scored")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="particle seeds")
    args = p.parse_args()
    setup(args)
    steps = args.steps or (10 if args.quick else 938)
    particles = args.particles or (20 if args.quick else 5000)
    images = args.images or (50 if args.quick else 1000)
    seeds = args.seeds or ([2] if args.quick else [2, 12, 22, 32])
    name, x, test = load(args.quick)
    d, xt = x.shape[1], test[:images]
    print(f"# data: {name}, {x.shape[0]} training images of {d} pixels", flush=True)
    torch.manual_seed(1)
    init = vae.VAE.mlp(d, LATENT, HIDDEN).state_dict()
    case = f"test LL after {steps} steps, K=1 (IWAE-{particles}, {len(xt)} images)"
    diffs, lls = [], {"bf16": [], "fp32": []}
    for seed in seeds:
        model = vae.VAE.mlp(d, LATENT, HIDDEN)
        model.load_state_dict(init)
        net = _same_start(model, HandVAE(d))
        hand_s = train(torch_step(net, Batches(x), 1, ""), steps, seed)
        hand_ll = score(_as_vae(net, d), xt, particles)
        model_batches = Batches(x)
        fused = compile_step(model, lr=LR, autocast_dtype=torch.bfloat16)
        bf16_s = train(lambda f=fused, b=model_batches: f(b()), steps, seed)
        bf16_ll = score(model, xt, particles)
        diffs.append(bf16_ll - hand_ll)
        lls["bf16"].append(bf16_ll)
        lls["fp32"].append(hand_ll)
        report(
            "vae_precision",
            f"{case}, particle seed {seed}",
            bf16_s,
            "torch",
            hand_s,
            vitorch_impl="compile_step(autocast_dtype=bfloat16), fused Adam",
            peer_impl="hand-written eager float32, torch.optim.Adam",
            vitorch_ll=bf16_ll,
            peer_ll=hand_ll,
            timing="one sequential run each, first (compiling) step excluded: a record, not a speed comparison",
        )
    n = len(diffs)
    se = statistics.stdev(diffs) / n**0.5 if n > 1 else None
    report(
        "vae_precision",
        f"{case}, mean over {n} seeds",
        None,
        "torch",
        None,
        vitorch_ll=statistics.fmean(lls["bf16"]),
        peer_ll=statistics.fmean(lls["fp32"]),
        mean_paired_difference=statistics.fmean(diffs),
        standard_error=se,
        seed_spread_fp32=statistics.stdev(lls["fp32"]) if n > 1 else None,
    )


if __name__ == "__main__":
    main()
