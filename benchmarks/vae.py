"""Training speed of the VAE zoo against the same model written by hand, in Pyro and in pythae.

Model: the 784-200-200-50 MLP VAE of Burda et al. (tanh units, Bernoulli decoder),
batch 128, Adam 1e-3, Fashion-MNIST binarized at 0.5 (scikit-learn digits, 64 pixels,
when the Debian package ``dataset-fashion-mnist`` is missing).  A timed call runs
``--inner`` training steps (zero grad, forward, backward, Adam step) on the same
sequence of minibatches for every contestant; medians of interleaved calls give
``ratio = peer_s / vitorch_s`` (> 1: vitorch is faster).

Cases: VAE (ELBO, K=1), IWAE K=5 and K=50, IWAE-DReG K=50.  vitorch runs ``VAE.mlp``
as it ships (its tanh and its Bernoulli output layer through :func:`vitorch.kernels.tanh` and
:func:`vitorch.kernels.bernoulli_linear_log_prob`, whose dispatcher picks the fused-torch
backends at the sizes of their documented rules); the hand-written model and the peers'
networks use ``nn.Tanh``.  Each case is timed twice for vitorch: with torch's
default Adam, the peers' optimizer (the cost of the model and bound alone), and with the
fused Adam ``vt.fit`` builds by default (lines ``..., vitorch as fit runs it``, against the
peers as their users run them; ``vitorch_optimizer``/``peer_optimizer`` name both).
Peers: ``torch`` (the same model by hand), ``pyro`` (``Trace_ELBO`` at K=1, ``RenyiELBO(alpha=0,
vectorize_particles=True)`` for IWAE), ``pythae`` (its ``VAE`` / ``IWAE`` models with
the same networks), whole loops (``vt.fit`` against pythae's ``BaseTrainer``, one epoch
each), and the fused path against the eager hand-written step: ``compile_step`` of
:mod:`vitorch.training.compile` (the forward compiled with ``fullgraph=True``, its backward,
fused Adam), the same step with ``autocast_dtype=torch.bfloat16`` (mixed precision: bfloat16
matrix products, float32 densities, loss and Adam) and ``torch.compile(model)`` with the hand
step's Adam, each line carrying Dynamo's graph and graph-break counts.  Then the IWAE test log-likelihood after the same
number of steps for vitorch, hand-written torch and Pyro, all three from the same initial
weights, minibatches and particle seed (``--ll-steps``, ``--ll-particles``, ``--ll-images``;
the reference setting: 2 epochs, K=5000, 1,000 test images); in a full run also the two fused
steps (float32 and bfloat16 matrix products) from the same start, scored in float32.

    python benchmarks/vae.py [--quick] [--threads 2]
"""

from __future__ import annotations

import time

import torch

import vitorch as vt
from _vae_setup import (
    BATCH,
    HIDDEN,
    LATENT,
    LR,
    Batches,
    HandLoss,
    HandVAE,
    as_vae,
    fit_epoch,
    load,
    pyro_step,
    pythae_step,
    pythae_trainer_epoch,
    repeat,
    same_start,
    torch_step,
    vitorch_step,
)
from vitorch.models import vae

from _harness import clock_name, interleaved_medians, parser, report, setup, try_import

CASES = [  # name, K, objective, estimator
    ("vae K=1", 1, vt.objectives.elbo, vt.estimators.reparam),
    ("iwae K=5", 5, vt.objectives.iwae, vt.estimators.reparam),
    ("iwae K=50", 50, vt.objectives.iwae, vt.estimators.reparam),
    ("iwae-dreg K=50", 50, vt.objectives.iwae, vt.estimators.dreg),
]


def loops(args, x, d):
    """Whole training loops: ``vt.fit`` against pythae's trainer, one epoch of the same images each."""
    import tempfile

    pythae, skip = try_import("pythae.trainers")
    n = args.inner * BATCH
    for case, K, _, _ in (c for c in CASES[:2] if c in args.cases):
        label = f"{case}, training loop (one epoch of {n} images)"
        if pythae is None:
            report("vae", label, None, "pythae", None, skipped=skip)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            peer, impl = pythae_trainer_epoch(d, x[:n], K, tmp)
            t = interleaved_medians({"fit": fit_epoch(d, x[:n], K), "pythae": peer}, args.repeats, warmup=1)
        report(
            "vae",
            label,
            t["fit"] / args.inner,
            "pythae",
            t["pythae"] / args.inner,
            vitorch_impl="vt.fit as it runs by default (fused Adam, finite-value guard, history, progress bar)",
            peer_impl=impl,
            peer_optimizer="torch.optim.Adam (its trainer's default)",
            clock=args.clock,
        )


def speed(args, x, d):
    """Eager training steps.  Two kinds of line per peer: ``vitorch`` with the peer's own optimizer
    (torch's default Adam; Pyro's ``pyro.optim.Adam`` wraps it), the cost of the model and the
    bound alone; and ``vitorch, fused Adam as fit runs it`` (``vt.fit``'s default optimizer) against
    the peer as its users run it, which differ in the optimizer too and say so."""
    pyro, pyro_skip = try_import("pyro")
    pythae, pythae_skip = try_import("pythae.models")
    cases = CASES[:2] if args.quick else CASES
    for case, K, objective, estimator in (c for c in cases if c in args.cases):
        inner = max(2, args.inner // K) if K > 1 else args.inner
        fns, peers = {}, {}

        options = dict(objective=objective, estimator=estimator, num_particles=K)
        fns["vitorch"] = repeat(vitorch_step(vae.VAE.mlp(d, LATENT, HIDDEN, **options), Batches(x)), inner)
        fit_like = vae.VAE.mlp(d, LATENT, HIDDEN, **options)
        fns["vitorch-fit"] = repeat(vitorch_step(fit_like, Batches(x), fused=True), inner)
        fns["torch"] = repeat(
            torch_step(HandVAE(d), Batches(x), K, "dreg" if estimator is vt.estimators.dreg else ""), inner
        )
        if estimator is vt.estimators.reparam:
            if pyro is not None:
                fn, peers["pyro"] = pyro_step(pyro, d, Batches(x), K)
                fns["pyro"] = repeat(fn, inner)
            if pythae is not None:
                fn, peers["pythae"] = pythae_step(d, Batches(x), K)
                fns["pythae"] = repeat(fn, inner)
        t = interleaved_medians(fns, args.repeats, warmup=1)
        per = {k: v / inner for k, v in t.items()}
        sps = {k: 1.0 / v for k, v in per.items()}
        optimizers = {
            "torch": "torch.optim.Adam (default, for-loop on CPU)",
            "pyro": "pyro.optim.Adam (torch's Adam per parameter)",
            "pythae": "torch.optim.Adam (its trainer's default)",
        }
        for mine, label, impl in (
            ("vitorch", case, "torch.optim.Adam, as the peer"),
            ("vitorch-fit", f"{case}, vitorch as fit runs it (fused Adam)", "fused Adam (vt.fit's default)"),
        ):
            for peer in ("torch", "pyro", "pythae"):
                skipped = {"pyro": pyro_skip, "pythae": pythae_skip}.get(peer)
                if peer in per:
                    report(
                        "vae",
                        label,
                        per[mine],
                        peer,
                        per[peer],
                        vitorch_steps_per_s=sps[mine],
                        peer_steps_per_s=sps[peer],
                        vitorch_optimizer=impl,
                        peer_impl=peers.get(peer, "hand-written"),
                        peer_optimizer=optimizers[peer],
                        steps_per_call=inner,
                        clock=args.clock,
                    )
                elif skipped is not None:
                    report("vae", label, per[mine], peer, None, skipped=skipped)
                elif estimator is vt.estimators.dreg:
                    report("vae", label, per[mine], peer, None, skipped=f"{peer} has no DReG estimator")


def _dynamo_stats() -> dict:
    """Dynamo's counters: graphs compiled and graph breaks (proof that compilation happened)."""
    from torch._dynamo.utils import counters

    return {
        "graphs": int(counters["stats"]["unique_graphs"]),
        "graph_breaks": int(sum(counters["graph_break"].values())),
    }


def _compiled_once(fns: dict, stats: dict, name: str, fn) -> None:
    """Run ``fn`` once (it compiles, outside the timing) and keep Dynamo's counts for this contestant alone."""
    torch._dynamo.utils.counters.clear()
    fn()
    fns[name], stats[name] = fn, _dynamo_stats()


def compiled(args, x, d):
    """The fused step (``vitorch.training.compile.compile_step``: compiled forward and backward, fused
    Adam) against the hand-written step eager and compiled the same way (``compile_step`` of
    `HandLoss`: the fair comparison of two compiled steps; not for DReG, whose hand step takes two
    ``autograd.grad`` calls), at IWAE K=5 also against Pyro (eager), and ``torch.compile(model)``
    with the hand step's Adam."""
    from vitorch.training.compile import compile_step

    pyro, _ = try_import("pyro")
    for case, K, objective, estimator in args.cases:
        if args.quick:
            report("vae", f"fused step {case}", None, "torch-eager", None, skipped="--quick: compile time")
            continue
        kind = "dreg" if estimator is vt.estimators.dreg else ""
        inner = max(2, args.inner // K) if K > 1 else args.inner
        fns, stats = {}, {}
        options = dict(objective=objective, estimator=estimator, num_particles=K)
        try:
            torch._dynamo.reset()
            fused, batches = compile_step(vae.VAE.mlp(d, LATENT, HIDDEN, **options), lr=LR), Batches(x)
            _compiled_once(fns, stats, "fused", repeat(lambda f=fused, b=batches: f(b()), inner))
            mixed = vae.VAE.mlp(d, LATENT, HIDDEN, **options)
            bf16, bf16_batches = compile_step(mixed, lr=LR, autocast_dtype=torch.bfloat16), Batches(x)
            _compiled_once(fns, stats, "fused bf16", repeat(lambda f=bf16, b=bf16_batches: f(b()), inner))
            other = vae.VAE.mlp(d, LATENT, HIDDEN, **options)
            step = vitorch_step(other, Batches(x), torch.compile(other))
            _compiled_once(fns, stats, "compiled forward", repeat(step, inner))
            if not kind:
                hand, hand_batches = compile_step(HandLoss(HandVAE(d), K), lr=LR), Batches(x)
                _compiled_once(fns, stats, "torch-compiled", repeat(lambda f=hand, b=hand_batches: f(b()), inner))
        except Exception as err:  # no compiler, or an op inductor cannot lower: report, never fake
            report("vae", f"fused step {case}", None, "torch-eager", None, skipped=f"{type(err).__name__}: {err}")
            continue
        fns["torch"] = repeat(torch_step(HandVAE(d), Batches(x), K, kind), inner)
        impls = {"torch": "hand-written, eager, torch.optim.Adam", "torch-compiled": "hand-written, compile_step"}
        if K == 5 and pyro is not None:
            fn, pyro_impl = pyro_step(pyro, d, Batches(x), K)
            fns["pyro"], impls["pyro"] = repeat(fn, inner), f"{pyro_impl}, eager, pyro.optim.Adam"
        t = interleaved_medians(fns, args.repeats, warmup=1)
        for name, impl in (
            ("fused", "compile_step (fused Adam), float32"),
            ("fused bf16", "compile_step(autocast_dtype=bfloat16): bf16 matrix products, float32 densities and Adam"),
            ("compiled forward", "torch.compile(model), Adam"),
        ):
            peers = {"torch-eager": "torch"}
            if name == "fused":
                peers |= {p: p for p in ("torch-compiled", "pyro") if p in t}
            for peer, key in peers.items():
                peer_stats = {f"peer_{k}": v for k, v in stats.get(key, {}).items()}
                report(
                    "vae",
                    f"{name} {case}",
                    t[name] / inner,
                    peer,
                    t[key] / inner,
                    vitorch_impl=impl,
                    peer_impl=impls[key],
                    vitorch_steps_per_s=inner / t[name],
                    peer_steps_per_s=inner / t[key],
                    clock=args.clock,
                    **stats[name],
                    **peer_stats,
                )


def log_likelihood(args, x, test, d):
    """IWAE test log-likelihood after the same training steps for vitorch, torch and Pyro.

    Every contestant starts from the same weights (copied), sees the same minibatches in the
    same order (fixed binarization) and draws its particles from the same seed, so the
    differences measure the implementations, not the luck of the draw.
    """
    torch.manual_seed(1)
    model = vae.VAE.mlp(d, LATENT, HIDDEN)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    contestants = {"vitorch": (vitorch_step(model, Batches(x)), model)}
    net = same_start(model, HandVAE(d))
    contestants["torch"] = (torch_step(net, Batches(x), 1, ""), as_vae(net, d))
    pyro, pyro_skip = try_import("pyro")
    if pyro is not None:
        step, _ = pyro_step(pyro, d, Batches(x), 1)
        same_start(model, step.net)
        contestants["pyro"] = (step, as_vae(step.net, d))
    if args.fused_ll and not args.quick:  # the fused paths from the same start (float32; bf16 matrix products)
        from vitorch.training.compile import compile_step

        for name, dtype in (("vitorch fused", None), ("vitorch fused bf16", torch.bfloat16)):
            twin = vae.VAE.mlp(d, LATENT, HIDDEN)
            twin.load_state_dict(init)
            step, twin_batches = compile_step(twin, lr=LR, autocast_dtype=dtype), Batches(x)
            contestants[name] = (lambda s=step, b=twin_batches: s(b()), twin)
    seconds, ll = {}, {}
    xt = test[: args.ll_images]
    for name, (step, scored) in contestants.items():
        torch.manual_seed(2)  # the same particle noise for every contestant
        t0 = time.perf_counter()
        for _ in range(args.ll_steps):
            step()
        seconds[name] = time.perf_counter() - t0
        torch.manual_seed(3)
        ll[name] = float(vae.iwae_log_likelihood(scored, xt, num_particles=args.ll_particles).mean())
    case = f"test LL after {args.ll_steps} steps, K=1 training (IWAE-{args.ll_particles}, {len(xt)} images)"
    for mine in [k for k in ll if k.startswith("vitorch fused")]:
        report(
            "vae",
            f"{case}, {mine[8:]} training",
            seconds[mine],
            "torch",
            seconds["torch"],
            vitorch_ll=ll[mine],
            peer_ll=ll["torch"],
            timing="one sequential run each (compile time included): a load record, not a speed comparison",
        )
    for peer in ("torch", "pyro"):
        if peer in ll:
            report(
                "vae",
                case,
                seconds["vitorch"],
                peer,
                seconds[peer],
                vitorch_ll=ll["vitorch"],
                peer_ll=ll[peer],
                timing="one sequential run each, not interleaved: a load record, not a speed comparison",
            )
        else:
            report("vae", case, seconds["vitorch"], peer, None, skipped=pyro_skip)


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--inner", type=int, default=None, help="training steps per timed call at K=1")
    p.add_argument("--ll-steps", type=int, default=None, help="training steps before the log-likelihood")
    p.add_argument("--ll-particles", type=int, default=None)
    p.add_argument("--ll-images", type=int, default=None)
    p.add_argument("--no-fused-ll", dest="fused_ll", action="store_false", help="skip the fused paths' log-likelihood")
    p.add_argument("--cases", nargs="+", choices=[c[0] for c in CASES], default=None, help="run only these cases")
    p.add_argument(
        "--parts",
        nargs="+",
        choices=["speed", "loops", "compile", "ll"],
        default=["speed", "loops", "compile", "ll"],
        help="what to run",
    )
    args = p.parse_args()
    setup(args)
    args.cases = [c for c in CASES if args.cases is None or c[0] in args.cases]
    args.clock = clock_name()  # the harness's --cpu-time switches every interleaved timing
    args.repeats = args.repeats or (2 if args.quick else 15)
    args.inner = args.inner or (3 if args.quick else 20)
    args.ll_steps = args.ll_steps or (10 if args.quick else 938)  # 2 epochs of 60,000 at batch 128
    args.ll_particles = args.ll_particles or (20 if args.quick else 5000)
    args.ll_images = args.ll_images or (50 if args.quick else 1000)
    # torch's first optimizer imports torch._dynamo (seconds); pay it before any timing.
    torch.optim.Adam([torch.zeros(1, requires_grad=True)], LR)
    name, x, test = load(args.quick)
    d = x.shape[1]
    print(f"# data: {name}, {x.shape[0]} training images of {d} pixels", flush=True)
    if "speed" in args.parts:
        speed(args, x, d)
    if "loops" in args.parts:
        loops(args, x, d)
    if "compile" in args.parts:
        compiled(args, x, d)
    if "ll" in args.parts:
        log_likelihood(args, x, test, d)


if __name__ == "__main__":
    main()
