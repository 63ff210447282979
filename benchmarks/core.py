"""Does the abstraction cost anything?  ``vt.loss`` + backward against the same computation by hand.

Model (amortized linear-Gaussian): ``z ~ N(0, I_D)``, ``x | z ~ N(W z + c, I_D)``; encoder
``q(z | x) = N(A x + a, diag(softplus(B x + b)))``.  Batch 128, D = 50, K in {1, 5, 50}.
Each timed step is: zero the gradients, forward, backward (no optimizer step, which is
identical on both sides).  The peer ``torch`` is the same model written directly.
A full run adds whole training steps (with Adam) for ELBO K=1, IWAE K=5 and DReG K=5:
vitorch through ``compile_step`` (compiled forward and backward, see
:mod:`vitorch.training.compile`) against the eager hand-written step.

    python benchmarks/core.py [--quick] [--threads 2] [--threads 1 --cpu-time]
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

import vitorch as vt
from vitorch.training import compile_step

from _harness import clock_name, interleaved_medians, parser, report, setup

LOG_2PI = math.log(2 * math.pi)


class Model(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.dec = nn.Linear(d, d)
        self.enc_loc = nn.Linear(d, d)
        self.enc_scale = nn.Linear(d, d)

    def guide(self, x):
        return self.enc_loc(x), F.softplus(self.enc_scale(x)) + 1e-4

    def log_joint(self, x):
        def f(z):
            log_prior = -0.5 * (z.pow(2).sum(-1) + z.shape[-1] * LOG_2PI)
            log_lik = -0.5 * ((x - self.dec(z)).pow(2).sum(-1) + x.shape[-1] * LOG_2PI)
            return log_prior + log_lik

        return f


def vitorch_step(model, x, K, objective, estimator):
    def step():
        model.zero_grad(set_to_none=True)
        q = vt.DiagNormal(*model.guide(x), validate_args=False)
        vt.loss(model.log_joint(x), q, K, objective, estimator).loss.backward()

    return step


def torch_step(model, x, K, kind):
    dec_params = list(model.dec.parameters())
    enc_params = list(model.enc_loc.parameters()) + list(model.enc_scale.parameters())

    def step():
        model.zero_grad(set_to_none=True)
        loc, scale = model.guide(x)
        eps = torch.randn(K, *loc.shape)
        z = loc + scale * eps
        log_p = model.log_joint(x)(z)
        if kind == "dreg":  # log q at stopped parameters; two surrogates for the two groups
            log_q = (-0.5 * ((z - loc.detach()) / scale.detach()).pow(2) - scale.detach().log()).sum(-1)
            log_w = log_p - log_q - 0.5 * z.shape[-1] * LOG_2PI
            w = torch.softmax(log_w.detach(), 0)
            enc_loss = -(w.pow(2) * log_w).sum(0).mean()
            dec_loss = -(w * log_w).sum(0).mean()
            g_enc = torch.autograd.grad(enc_loss, enc_params, retain_graph=True)
            g_dec = torch.autograd.grad(dec_loss, dec_params)
            for p, g in zip(enc_params + dec_params, g_enc + g_dec):
                p.grad = g
            return
        log_q = (-0.5 * eps.pow(2) - scale.log()).sum(-1) - 0.5 * z.shape[-1] * LOG_2PI
        log_w = log_p - log_q
        bound = log_w.mean(0) if kind == "elbo" else torch.logsumexp(log_w, 0) - math.log(K)
        (-bound.mean()).backward()

    return step


def main():
    args = parser(__doc__).parse_args()
    setup(args)
    batch, d = (16, 8) if args.quick else (128, 50)
    repeats = args.repeats or (5 if args.quick else 60)
    model = Model(d)
    x = torch.randn(batch, d)
    O, E = vt.objectives, vt.estimators
    cases = [
        ("elbo-reparam", 1, O.elbo, E.reparam, "elbo"),
        ("iwae-reparam", 5, O.iwae, E.reparam, "iwae"),
        ("iwae-reparam", 50, O.iwae, E.reparam, "iwae"),
        ("iwae-dreg", 5, O.iwae, E.dreg, "dreg"),
        ("iwae-dreg", 50, O.iwae, E.dreg, "dreg"),
    ]
    for name, K, objective, estimator, kind in cases:
        t = interleaved_medians(
            {
                "vitorch": vitorch_step(model, x, K, objective, estimator),
                "torch": torch_step(model, x, K, kind),
            },
            repeats,
        )
        case = f"{name} K={K} B={batch} D={d}"
        report("core", case, t["vitorch"], "torch", t["torch"], threads=args.threads, clock=clock_name())
    if args.quick:
        return  # compiling takes longer than a smoke run
    for name, K, objective, estimator, kind in cases[:2] + cases[3:4]:
        t = interleaved_medians(training_steps(model, x, K, objective, estimator, kind), repeats)
        case = f"{name} K={K} B={batch} D={d}, training step (Adam): vitorch compile_step"
        report("core", case, t["vitorch"], "torch", t["torch"], threads=args.threads, clock=clock_name())


class _Forward(nn.Module):
    """The vitorch step as a module, for ``compile_step``: ``forward(x)`` returns ``vt.loss``'s output."""

    def __init__(self, model: Model, K: int, objective, estimator):
        super().__init__()
        self.model, self.K, self.objective, self.estimator = model, K, objective, estimator

    def forward(self, x):
        q = vt.DiagNormal(*self.model.guide(x), validate_args=False)
        return vt.loss(self.model.log_joint(x), q, self.K, self.objective, self.estimator)


def training_steps(model: Model, x, K: int, objective, estimator, kind: str) -> dict:
    """A whole training step (zero grad, forward, backward, Adam) on two copies of the same
    model: vitorch through ``compile_step`` (compiled forward and backward) and the eager hand
    step.  The first call compiles, outside the timing."""
    mine, theirs = Model(x.shape[1]), Model(x.shape[1])
    mine.load_state_dict(model.state_dict())
    theirs.load_state_dict(model.state_dict())
    step = compile_step(_Forward(mine, K, objective, estimator), torch.optim.Adam(mine.parameters(), 1e-3))
    hand, opt = torch_step(theirs, x, K, kind), torch.optim.Adam(theirs.parameters(), 1e-3)

    def hand_step():
        hand()
        opt.step()

    step(x)
    return {"vitorch": lambda: step(x), "torch": hand_step}


if __name__ == "__main__":
    main()
