"""IVON: an Adam-like optimizer that learns a diagonal Gaussian posterior over the weights.

IVON (Improved Variational Online Newton) keeps, for every weight, a mean ``m`` (stored
in the parameter itself between steps), a momentum ``g`` of the gradients and an
estimate ``h`` of the diagonal Hessian of the average loss per datum.  The posterior is
``q(θ) = N(m, diag(σ²))`` with ``σ² = 1 / (λ (h + δ))``, ``λ`` the effective sample size
``ess`` and ``δ`` the weight decay, which is a Gaussian prior of precision ``λ δ``.
One step (Shen et al., 2024, Algorithm 1):

1. draw ``θ = m + σ ε``, ``ε ~ N(0, I)``, and compute ``ĝ = ∇ℓ̄(θ)`` there (averaged over
   ``mc_samples`` draws);
2. reparameterization (Stein/Price) Hessian estimate ``ĥ = ĝ (θ - m) / σ²``;
3. ``g ← β₁ g + (1 - β₁) ĝ``;
4. ``h ← β₂ h + (1 - β₂) ĥ + ½ (1 - β₂)² (h - ĥ)² / (h + δ)`` (the last term keeps
   ``h + δ`` positive whatever the sign of ``ĥ``);
5. ``m ← m - α clip((g / (1 - β₁ᵗ) + δ m) / (h + δ), ±ξ)``.

With ``rescale_lr`` (the default, as in the authors' package) the step size is
``α = lr (h₀ + δ)``, so ``lr`` plays the part of an SGD learning rate.

Data parallel (``DistributedDataParallel``): every process must draw the *same* ``ε``
(`broadcast_noise` gives them rank 0's noise stream; `vitorch.fit` calls it); then N
processes take exactly the step one process takes on the union of their batches.  Why,
and how the noise is seeded and checkpointed, is in `vitorch.optim._noise`.

The loss the model returns must be the *average* negative log-likelihood per datum
over the batch (a cross-entropy with ``reduction="mean"``): IVON multiplies by ``ess``
itself.

References:
    Shen, Daheim, Cong, Nickl, Marconi, Bazan, Yokota, Gurevych, Cremers, Khan &
    Möllenhoff, *Variational Learning is Effective for Large Deep Networks* (ICML 2024).
    Lin, Schmidt & Khan, *Handling the Positive-Definite Constraint in the Bayesian
    Learning Rule* (ICML 2020): the correction term of step 4.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from ._buffers import GroupBuffers, check_group
from ._noise import NoiseStreams

__all__ = ["IVON"]


def _real(name: str, value, low: float, *, low_ok: bool, high: float = math.inf, high_ok: bool = False) -> float:
    """``value`` as a float inside the interval, else a ValueError (TypeError if not a number) naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"IVON: {name} must be a real number; got {type(value).__name__} {value!r}")
    value = float(value)
    above = value >= low if low_ok else value > low
    below = value <= high if high_ok else value < high
    if math.isnan(value) or not (above and below):
        interval = f"{'[' if low_ok else '('}{low}, {high}{']' if high_ok else ')'}"
        raise ValueError(f"IVON: {name} must lie in {interval}; got {value!r}")
    return value


class IVON(torch.optim.Optimizer):
    """Improved Variational Online Newton: variational learning at about Adam's cost.

    The module's parameters hold the posterior mean between steps.  Each training
    forward and backward runs inside `sampled_params`, which puts a draw
    ``θ ~ q`` in the parameters and takes the mean back on exit::

        for x, y in loader:
            for _ in range(opt.mc_samples):
                with opt.sampled_params(train=True):
                    loss = F.cross_entropy(model(x), y)   # mean NLL per datum
                    loss.backward()
            opt.step()

    or ``opt.step(closure)`` with a closure that computes the loss and calls
    ``backward``.  `vitorch.fit` does the former by itself.  Predict with
    `vitorch.optim.bma_predict` (Bayesian model averaging over draws) or, at the
    mean, with the module as it is.

    Args:
        params: the parameters (or parameter groups) to learn; every parameter of a group
            must share one device and dtype.
        lr: learning rate; the step is ``α = lr (h₀ + δ)`` with ``rescale_lr``, so ``lr``
            is set as for SGD with momentum (0.05-0.5), decayed over the run.
        ess: effective sample size ``λ``, normally the number of training data ``N``;
            smaller values widen the posterior (a tempered posterior, temperature
            ``N / λ``).
        hess_init: initial Hessian estimate ``h₀ > 0``; the initial posterior standard
            deviation is ``1 / sqrt(λ (h₀ + δ))``.  Smaller values explore more early on.
        beta1: momentum of the gradients, in ``[0, 1)``.
        beta2: momentum of the Hessian estimate, in ``[0, 1]``; close to 1 (the
            default ``0.99999``) averages the noisy estimates over many steps.
        weight_decay: ``δ >= 0``; the prior is ``N(0, 1 / (λ δ))`` per weight.
        mc_samples: draws per step used by `step` with a closure and by `vitorch.fit`.
        clip_radius: ``ξ > 0``, element-wise clip of the preconditioned update
            (``inf``: none).
        rescale_lr: multiply ``lr`` by ``h₀ + δ`` (the authors' package does).
        debias: divide the momentum by ``1 - β₁ᵗ``.
        seed: seed of the optimizer's own generator for the weight noise; default drawn
            from torch's global generator when the optimizer is built.  The generator's
            state is part of `state_dict`, so a resumed run draws the same noise.  Under
            `vitorch.fit` in a process group every rank takes rank 0's (`broadcast_noise`).

    Shapes: every state tensor (``momentum``, ``hess``) has its parameter's shape;
    the posterior standard deviations are `posterior_std`.

    References:
        Shen et al., *Variational Learning is Effective for Large Deep Networks* (ICML 2024), Algorithm 1.
    """

    def __init__(
        self,
        params,
        lr: float,
        ess: float,
        hess_init: float = 1.0,
        beta1: float = 0.9,
        beta2: float = 0.99999,
        weight_decay: float = 1e-4,
        mc_samples: int = 1,
        clip_radius: float = math.inf,
        rescale_lr: bool = True,
        debias: bool = True,
        seed: int | None = None,
    ):
        defaults = dict(
            lr=_real("lr", lr, 0.0, low_ok=True),
            ess=_real("ess", ess, 0.0, low_ok=False),
            hess_init=_real("hess_init", hess_init, 0.0, low_ok=False),
            beta1=_real("beta1", beta1, 0.0, low_ok=True, high=1.0),
            beta2=_real("beta2", beta2, 0.0, low_ok=True, high=1.0, high_ok=True),
            weight_decay=_real("weight_decay", weight_decay, 0.0, low_ok=True),
            clip_radius=_real("clip_radius", clip_radius, 0.0, low_ok=False, high_ok=True),
            rescale_lr=bool(rescale_lr),
            debias=bool(debias),
        )
        if isinstance(mc_samples, bool) or not isinstance(mc_samples, int):
            raise TypeError(f"IVON: mc_samples must be an int; got {type(mc_samples).__name__} {mc_samples!r}")
        if mc_samples < 1:
            raise ValueError(f"IVON: mc_samples must be >= 1; got {mc_samples}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"IVON: seed must be an int or None; got {type(seed).__name__} {seed!r}")
        super().__init__(params, defaults)
        self.mc_samples = mc_samples
        self._noise = NoiseStreams(seed)
        self._buffers: dict[int, GroupBuffers] = {}
        self._draws = 0  # training draws collected since the last step
        self._open = False

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        try:
            check_group(self.param_groups[-1]["params"], len(self.param_groups) - 1)
        except ValueError:
            self.param_groups.pop()
            raise

    # ----- the weight noise --------------------------------------------------------

    @property
    def _seed(self) -> int:
        return self._noise.seed

    def _generator(self, device: torch.device) -> torch.Generator:
        return self._noise.generator(device)

    def _devices(self) -> set[torch.device]:
        return {p.device for group in self.param_groups for p in group["params"] if p.requires_grad}

    def _groups(self) -> Iterator[tuple[int, dict, GroupBuffers]]:
        """Each group with trainable parameters, its state initialized, and its scratch buffers."""
        for i, group in enumerate(self.param_groups):
            params = [p for p in group["params"] if p.requires_grad]
            if not params:
                continue
            buffers = self._buffers.get(i)
            if buffers is None or not buffers.holds(params):
                buffers = self._buffers[i] = GroupBuffers(params, i)
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["momentum"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["hess"] = torch.full_like(p, group["hess_init"], memory_format=torch.preserve_format)
            yield i, group, buffers

    @torch.no_grad()
    def posterior_std(self) -> list[Tensor]:
        """The posterior standard deviations ``σ = 1 / sqrt(λ (h + δ))``, one tensor per trainable parameter."""
        out = []
        for _, group, buffers in self._groups():
            hess = [self.state[p]["hess"] for p in buffers.params]
            out += [h.add(group["weight_decay"]).mul_(group["ess"]).rsqrt_() for h in hess]
        return out

    @contextlib.contextmanager
    def sampled_params(self, train: bool = False, generator: torch.Generator | None = None) -> Iterator[None]:
        """Within the block the parameters hold a draw ``θ = m + σ ε``; on exit, the mean again.

        Args:
            train: collect this draw's gradients for the next `step`: the block must run
                ``backward``.  Each parameter's ``.grad`` then holds the average of the
                gradients of the draws since the last step (gradients present when the
                first draw opened are discarded), and the draw's Hessian estimate is kept.
            generator: draw ``ε`` from this generator (on the parameters' device) instead
                of the optimizer's own, leaving the latter's stream untouched (e.g. for
                evaluation in the middle of training).

        Raises:
            RuntimeError: if a draw is already open (draws do not nest).
        """
        if self._open:
            raise RuntimeError("IVON.sampled_params: a draw is already open; draws do not nest")
        draw = self._perturb(train, generator)
        self._open = True
        completed = False
        try:
            yield
            completed = True
        finally:
            self._open = False
            with torch.no_grad():
                for (_, _, buffers), _noise, _stash in draw:
                    torch._foreach_copy_(buffers.params, buffers.mean)  # the mean, bit for bit
                if train:
                    self._collect(draw, completed)

    @torch.no_grad()
    def _perturb(self, train: bool, generator: torch.Generator | None) -> list:
        """Put ``m + σ ε`` into every trainable parameter; return what the exit needs."""
        draw = []
        for i, group, buffers in self._groups():
            params = buffers.params
            if train:
                # The first draw of a step writes its noise where its Hessian statistic will
                # accumulate (the product ĝ ε is formed in place); later draws use a spare.
                noise, flat = (buffers.noise, buffers.noise_flat) if self._draws == 0 else buffers.spare()
                # The running average of earlier draws' gradients steps aside, so that
                # backward writes this draw's gradient alone.
                stash = [p.grad for p in params] if self._draws > 0 else None
                for p in params:
                    p.grad = None
            else:
                flat = torch.empty_like(buffers.noise_flat)
                noise, stash = buffers.views(flat), None
            flat.normal_(generator=generator if generator is not None else self._generator(flat.device))
            if train and self._draws > 0:
                sigma = buffers.sigma  # h has not changed since the step's first draw
            else:
                sigma = torch._foreach_add([self.state[p]["hess"] for p in params], group["weight_decay"])
                torch._foreach_mul_(sigma, group["ess"])
                torch._foreach_rsqrt_(sigma)  # σ = 1 / sqrt(λ (h + δ))
                if train:
                    buffers.sigma = sigma  # the step needs it for ĥ
            torch._foreach_copy_(buffers.mean, params)
            torch._foreach_addcmul_(params, noise, sigma)  # θ = m + σ ε; ε stays in `noise`
            draw.append(((i, group, buffers), noise, stash))
        return draw

    @torch.no_grad()
    def _collect(self, draw: list, completed: bool) -> None:
        """Fold a finished training draw into the step's averages (or undo a failed one)."""
        if not completed:  # an exception inside the block: the draw does not count
            for (_, _, buffers), _noise, stash in draw:
                for p, g in zip(buffers.params, stash or [None] * len(buffers.params)):
                    p.grad = g
            return
        count = self._draws + 1
        for (_, _, buffers), noise, stash in draw:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in buffers.params]
            if any(g.is_sparse for g in grads):
                raise RuntimeError("IVON does not support sparse gradients")
            torch._foreach_mul_(noise, grads)  # ĝ ε; divided by σ at the step, this is ĥ = ĝ (θ - m) / σ²
            if count > 1:
                torch._foreach_lerp_(buffers.noise, noise, 1.0 / count)  # running mean over draws
                torch._foreach_lerp_(stash, grads, 1.0 / count)
                for p, g in zip(buffers.params, stash):
                    p.grad = g
            else:
                for p, g in zip(buffers.params, grads):
                    p.grad = g
        self._draws = count

    # ----- the update --------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """Update the means, momenta and Hessian estimates from the draws since the last step.

        Args:
            closure: optional; computes the loss *and calls backward*.  It is run
                ``mc_samples`` times, each inside ``sampled_params(train=True)``.

        Returns:
            The closure's loss averaged over the draws (detached), or ``None``.

        Raises:
            RuntimeError: if no training draw was made since the last step, or a draw is open.
        """
        loss = None
        if closure is not None:
            losses = []
            for _ in range(self.mc_samples):
                with torch.enable_grad(), self.sampled_params(train=True):
                    losses.append(closure().detach())
            loss = torch.stack(losses).mean()
        if self._open:
            raise RuntimeError("IVON.step: called inside sampled_params; step after the block closes")
        if self._draws == 0:
            raise RuntimeError(
                "IVON.step: no gradients from sampled weights since the last step; run the forward and backward "
                "inside `with optimizer.sampled_params(train=True):` (vitorch.fit does), or pass a closure"
            )
        for _, group, buffers in self._groups():
            self._update(group, buffers)
        self._draws = 0
        return loss

    def _update(self, group: dict, buffers: GroupBuffers) -> None:
        params, nxg = buffers.params, buffers.noise
        states = [self.state[p] for p in params]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        momentum = [s["momentum"] for s in states]
        hess = [s["hess"] for s in states]
        for s in states:
            s["step"] += 1
        t = float(states[0]["step"])  # the parameters of a group are always stepped together
        beta1, beta2, ess, delta = group["beta1"], group["beta2"], group["ess"], group["weight_decay"]

        torch._foreach_lerp_(momentum, grads, 1.0 - beta1)  # g ← β₁ g + (1 - β₁) ĝ
        # ĥ = ĝ (θ - m) / σ² = (mean over draws of ĝ ε) / σ, σ from h before this step.
        sigma = buffers.sigma
        torch._foreach_div_(nxg, sigma)
        torch._foreach_sub_(nxg, hess)  # ĥ - h
        torch._foreach_add_(hess, nxg, alpha=1.0 - beta2)  # β₂ h + (1 - β₂) ĥ
        # + ½ (1 - β₂)² (h - ĥ)² / (h + δ), written with 1 / (h + δ) = λ σ².
        torch._foreach_mul_(nxg, sigma)
        torch._foreach_addcmul_(hess, nxg, nxg, value=0.5 * (1.0 - beta2) ** 2 * ess)
        buffers.sigma = None

        # m ← m - α clip((g / b + δ m) / (h + δ), ±ξ), b = 1 - β₁ᵗ; worked with b folded
        # into the numerator, (g + b δ m) / (h + δ), and the clip radius scaled by b to match.
        b = 1.0 - beta1**t if group["debias"] else 1.0
        alpha = group["lr"] * (group["hess_init"] + delta if group["rescale_lr"] else 1.0)
        update = torch._foreach_add(momentum, params, alpha=delta * b)
        torch._foreach_div_(update, torch._foreach_add(hess, delta))
        if math.isfinite(group["clip_radius"]):
            torch._foreach_clamp_min_(update, -group["clip_radius"] * b)
            torch._foreach_clamp_max_(update, group["clip_radius"] * b)
        torch._foreach_add_(params, update, alpha=-alpha / b)

    # ----- state -------------------------------------------------------------------

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients; outside a draw, also forget the draws collected since the last step."""
        super().zero_grad(set_to_none)
        if not self._open:
            self._draws = 0

    def state_dict(self) -> dict:
        """torch's optimizer state plus ``"noise"``: the seed and generator states of the weight noise.

        Draws collected since the last step are not part of it: save after `step`.
        """
        state = super().state_dict()
        state["noise"] = self._noise.state()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        if self._open:
            raise RuntimeError("IVON.load_state_dict: a draw is open")
        state_dict = dict(state_dict)
        noise = state_dict.pop("noise", None)
        super().load_state_dict(state_dict)
        self._draws = 0
        if noise is not None:
            self._noise.load(noise, self._devices())

    def broadcast_noise(self, src: int = 0, group=None) -> None:
        """Give every process of ``group`` rank ``src``'s noise: its seed and generator states.

        Under data parallelism all ranks must draw the same ``ε`` (see the module notes):
        call this once after building (or loading) the optimizer on every rank;
        `vitorch.fit` does so under a process group.  Outside an initialized process group
        it does nothing.

        Args:
            src: the rank whose noise the others take.
            group: the process group (default: the whole world).

        Raises:
            RuntimeError: if a draw is open or draws were collected since the last step.
        """
        if self._open or self._draws:
            raise RuntimeError("IVON.broadcast_noise: call it between steps, not with draws open or collected")
        self._noise.broadcast(self._devices(), src, group)
