"""The loop behind `vitorch.training.fit`: set-up, steps, evaluation and checkpoints.

Order of work in one step: zero grad, forward, backward, the non-finite check (one
host sync for the loss, the bound and the flags), clip, optimizer and scheduler step,
the history record, then evaluation, checkpoint and callbacks.  A checkpoint is taken
after all of that, so a resumed run replays nothing and repeats nothing.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau
from tqdm.auto import tqdm

from . import distributed as ddp
from .checkpoint import copy_state, load_checkpoint
from .compile import Autocast, fused_adam
from .data import epoch_sampler, is_no_data, loader_generators, make_eval_loader, make_loader, to_device
from .evaluation import evaluate, unusable_evaluation
from .guard import (
    NonFiniteError,
    add_step_note,
    describe_divergence,
    describe_nonfinite,
    divergent_parameters,
    nonfinite_parameters,
    parameter_norm,
    split_output,
    step_statistics,
)
from .history import History
from .options import FitOptions
from .resume import optimizer_config, run_config
from .rng import capture_rng, generator_states, restore_generators, restore_rng
from .state import RunState, loader_length

__all__ = ["Run", "StepContext"]


@dataclass
class StepContext:
    """What a callback receives after each step; set ``stop = True`` to end the run.

    Attributes:
        step: optimizer steps taken so far (1-based for the step just done).
        epoch: current epoch (0-based).
        record: this step's history record (``loss``, ``bound``, ``lr``...).
        eval: the metrics if an evaluation ran at this step, else ``None``.
        model: the model being trained (not the DDP or compiled wrapper).
        optimizer: the live optimizer.
        history: the live `History`.
        stop: set to ``True`` to end the run after this step.

    References:
        Prechelt, *Early Stopping - But When?* (Neural Networks: Tricks of the Trade, 1998).
    """

    step: int
    epoch: int
    record: dict
    eval: dict | None
    model: nn.Module
    optimizer: torch.optim.Optimizer
    history: History
    stop: bool = field(default=False)


class Run(RunState):
    """One call of `fit`: the set-up, the state a checkpoint holds, and the loop."""

    def __init__(self, model: nn.Module, data, opt: FitOptions):
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be an nn.Module; got {type(model).__name__}")
        self.model, self.opt = model, opt
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("model has no parameters with requires_grad=True")
        self.device = torch.device(opt.device) if opt.device is not None else self.params[0].device
        self.topo = ddp.setup(opt.distributed)
        payload = load_checkpoint(opt.resume, model) if opt.resume is not None else None
        if payload is not None:
            # An explicit seed that differs from the checkpoint's is refused by the
            # configuration check, unless resume_overrides allows it at an epoch boundary.
            self.seed = int(payload["loop"]["seed"]) if opt.seed is None else int(opt.seed)
        else:
            seed = opt.seed if opt.seed is not None else int(torch.randint(2**62, ()).item())
            self.seed = ddp.broadcast_int(seed, self.topo, self.device)
            if self.topo.rank > 0:
                # Each rank draws its own particles: without this, ranks seeded alike would
                # reuse rank 0's noise on their own data (correlated gradient estimates).
                torch.manual_seed(torch.initial_seed() + self.topo.rank)
        self.loader = make_loader(
            data,
            batch_size=opt.batch_size,
            shuffle=opt.shuffle,
            drop_last=opt.drop_last,
            num_workers=opt.num_workers,
            seed=self.seed,
            rank=self.topo.rank,
            world=self.topo.world,
        )
        self.generators = loader_generators(self.loader)
        self.optimizer = _make_optimizer(opt, self.params)
        optimizer_cfg = optimizer_config(self.optimizer)  # before a scheduler moves lr
        self.scheduler = opt.scheduler(self.optimizer) if _is_factory(opt.scheduler) else opt.scheduler
        self.config = run_config(
            opt, self.loader, optimizer_cfg, self.scheduler, self.seed, self.topo.world, is_no_data(self.loader)
        )
        # Counters and the state a checkpoint restores.
        self.step = self.epoch = self.batch = 0
        self.bad_evals = self.consecutive_skips = self.eval_skips = 0
        self.history, self.best_state = History(), None
        self.epoch_start: dict | None = None
        self.finish_epoch = False
        self.resume_rng = self._restore(payload) if payload is not None else None
        share_noise = getattr(self.optimizer, "broadcast_noise", None)
        if self.topo.active and share_noise is not None:
            # An optimizer that draws weight noise of its own (vitorch.optim.IVON; duck-typed)
            # must draw rank 0's on every rank: DDP averages the gradients, and each rank pairs
            # that average with its noise in the Hessian estimate.
            share_noise(src=0)
        self.eval_loader = None
        if opt.eval_data is not None:
            self.eval_loader = make_eval_loader(
                opt.eval_data,
                batch_size=opt.eval_batch_size or opt.batch_size,
                rank=self.topo.rank,
                world=self.topo.world,
            )
        self.eval_every = opt.eval_every or (loader_length(self.loader) if self.eval_loader is not None else None)
        if self.eval_loader is not None and not self.eval_every:
            raise ValueError("eval_every is required when the training data has no length")
        wrapped = ddp.wrap(model, self.topo, self.device)
        if opt.autocast_dtype is not None:
            wrapped = Autocast(wrapped, opt.autocast_dtype, self.device)
        if opt.compile:
            options = dict(opt.compile) if isinstance(opt.compile, Mapping) else {}
            if options.get("backend", "inductor") == "inductor" and "mode" not in options:
                # As compile_step: torch's vectorized generator for the particles' noise
                # (the eager draws), not Inductor's per-element Philox loop, slower on CPU.
                options["options"] = {"fallback_random": True, **dict(options.get("options") or {})}
            wrapped = torch.compile(wrapped, **options)
        self.forward = wrapped

    # ----- the loop ----------------------------------------------------------------

    def train(self) -> History:
        opt, topo = self.opt, self.topo
        was_training = self.model.training
        self.model.train()
        self.saved_step = self.step if opt.resume is not None else -1
        self.t0 = time.perf_counter() - (self.history.steps[-1]["time"] if self.history.steps else 0.0)
        show = opt.progress if opt.progress is not None else sys.stderr.isatty()
        self.bar = tqdm(total=self._total(), initial=self.step, disable=not (show and topo.is_main), dynamic_ncols=True)
        reason = None
        try:
            while reason is None:
                reason = self._epoch()
        finally:
            self.bar.close()
            self.model.train(was_training)
        self.history.stop_reason = reason
        if opt.checkpoint_dir is not None and self.saved_step != self.step:
            self._checkpoint()
        if opt.restore_best and self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        if opt.log_dir is not None and topo.is_main:
            self.history.write(opt.log_dir)
        return self.history

    def _total(self) -> int | None:
        n = loader_length(self.loader)
        by_epochs = self.opt.epochs * n if (self.opt.epochs is not None and n) else None
        totals = [t for t in (self.opt.steps, by_epochs) if t is not None]
        return min(totals) if totals else None

    def _epoch(self) -> str | None:
        """Run (the rest of) one epoch; return why the run stops, or ``None`` to go on."""
        opt = self.opt
        if opt.epochs is not None and self.epoch >= opt.epochs:
            return "epochs"
        if opt.steps is not None and self.step >= opt.steps:
            return "steps"
        resuming = self.resume_rng is not None
        if resuming and self.finish_epoch:
            # Resumed at the end of an epoch with other data (resume_overrides): nothing of
            # the old order is owed, so the epoch ends without replaying it.
            restore_rng(self.resume_rng)
            self.resume_rng, self.finish_epoch = None, False
            return self._end_epoch()
        if resuming and self.batch > 0 and self.epoch_start is not None:
            # Replay the epoch's start so the sampler and workers draw the same order,
            # skip the batches already trained on, then continue from the saved state.
            restore_rng(self.epoch_start["rng"])
            restore_generators(self.generators, self.epoch_start["gens"])
        else:
            if resuming:
                restore_rng(self.resume_rng)
                resuming = False
            self.batch = 0
            self.epoch_start = {"rng": capture_rng(), "gens": generator_states(self.generators)}
        sampler = epoch_sampler(self.loader)
        if sampler is not None:
            sampler.set_epoch(self.epoch)
        it = iter(self.loader)
        if resuming:
            for _ in range(self.batch):
                next(it, None)
            restore_rng(self.resume_rng)
        self.resume_rng = None
        for batch in it:
            reason = self._step(batch)
            if reason is not None:
                return reason
        return self._end_epoch()

    def _end_epoch(self) -> None:
        self.epoch += 1
        self.batch = 0
        if self.scheduler is not None and self.opt.scheduler_interval == "epoch" and not self._plateau():
            self.scheduler.step()
        return None

    def _plateau(self) -> bool:
        return isinstance(self.scheduler, ReduceLROnPlateau)

    def _step(self, batch) -> str | None:
        opt, topo = self.opt, self.topo
        self.step += 1
        self.batch += 1
        self.optimizer.zero_grad(set_to_none=True)
        try:
            batch = to_device(batch, self.device)
            # An optimizer that trains on sampled weights offers ``sampled_params(train=True)``,
            # a context that holds a draw from its posterior in the parameters (as
            # vitorch.optim.IVON does; a duck-typed protocol, so the loop imports no optimizer):
            # forward and backward run inside it, once per draw (``mc_samples``).
            draws = getattr(self.optimizer, "sampled_params", None)
            if draws is None:
                loss, bound = split_output(self.forward(batch))
                loss.backward()
            else:
                loss, bound = _on_sampled_weights(self.forward, batch, draws, getattr(self.optimizer, "mc_samples", 1))
        except Exception as err:
            # A divergent update can surface here, as a family's validation error one step later.
            add_step_note(err, self.step, self.epoch, self.batch, "the model's forward or backward")
            raise
        summable, norm = step_statistics(loss, bound, self.params)
        # Every rank must take the same branch, and rank 0 logs the global loss and bound:
        # one all-reduce of (loss, bound sum, data, impossible data, flags).
        summable = ddp.all_reduce(summable, topo)
        stats = torch.cat([summable, norm[None]]).tolist()  # the step's only host sync before the update
        loss_sum, bound_sum, count, impossible, loss_bad, grad_bad, grad_norm = stats
        loss_v, impossible = loss_sum / topo.world, int(impossible)
        record = {"step": self.step, "epoch": self.epoch, "loss": loss_v}
        if bound is not None:
            record["bound"] = bound_sum / count if count else math.nan
            record["impossible_data"] = impossible
            self.history.impossible_data += impossible
        record["lr"] = float(self.optimizer.param_groups[0]["lr"])
        record["grad_norm"] = grad_norm
        # An alarm with no bad entry is a squared norm that overflowed on finite gradients.
        bad_params = nonfinite_parameters(self.model) if grad_bad else []
        if loss_bad or bad_params or impossible:
            message = describe_nonfinite(bad_params, loss_v, self.step, self.epoch, self.batch, impossible, int(count))
            if opt.on_nonfinite == "raise":
                raise NonFiniteError(message)
            self.optimizer.zero_grad(set_to_none=True)
            self.history.skipped += 1
            self.consecutive_skips += 1
            record["skipped"] = 1
            if self.consecutive_skips > opt.max_consecutive_skips:
                raise NonFiniteError(
                    f"{self.consecutive_skips} consecutive non-finite steps (max_consecutive_skips="
                    f"{opt.max_consecutive_skips}); the last: {message}"
                )
        else:
            self.consecutive_skips = 0
            if opt.clip_grad_value is not None:
                nn.utils.clip_grad_value_(self.params, opt.clip_grad_value)
            if opt.clip_grad_norm is not None and opt.clip_grad_value is not None:
                nn.utils.clip_grad_norm_(self.params, opt.clip_grad_norm)  # the norm changed: recompute
            elif opt.clip_grad_norm is not None:  # reuse the norm the guard computed
                nn.utils.clip_grads_with_norm_(self.params, opt.clip_grad_norm, norm.to(self.params[0].dtype))
            self.optimizer.step()
            # Parameters are equal on every rank (DDP), so each rank decides alike without a collective.
            if not math.isfinite(parameter_norm(self.params).item()):
                bad = divergent_parameters(self.model)
                if bad:
                    raise NonFiniteError(
                        describe_divergence(bad, self.step, self.epoch, self.batch, record["lr"], grad_norm)
                    )
            if self.scheduler is not None and opt.scheduler_interval == "step" and not self._plateau():
                self.scheduler.step()
            record["skipped"] = 0
        record["time"] = time.perf_counter() - self.t0
        self.history.steps.append(record)
        self.bar.update(1)
        self.bar.set_postfix({k: f"{record[k]:.4g}" for k in ("loss", "bound") if k in record}, refresh=False)

        metrics, reason = None, None
        if self.eval_loader is not None and self.step % self.eval_every == 0:
            metrics, reason = self._evaluate()
        if opt.steps is not None and self.step >= opt.steps:
            reason = reason or "steps"
        if opt.checkpoint_every is not None and self.step % opt.checkpoint_every == 0:
            self._checkpoint()
        if opt.callbacks:
            ctx = StepContext(self.step, self.epoch, record, metrics, self.model, self.optimizer, self.history)
            for callback in opt.callbacks:
                callback(ctx)
            stop = ddp.all_reduce(torch.tensor([float(ctx.stop)], device=self.device), topo, op="max")
            if stop.item() and reason is None:
                reason = "callback"
        return reason

    def _evaluate(self) -> tuple[dict, str | None]:
        opt = self.opt
        metrics, impossible, count = evaluate(
            self.model, self.eval_loader, self.topo, self.device, opt.eval_fn, lambda b: to_device(b, self.device)
        )
        monitor = opt.monitor or next((m for m in ("bound", "loss") if m in metrics), None)
        if monitor is None and len(metrics) == 1:
            monitor = next(iter(metrics))  # a custom eval_fn with one metric: watch that one
        if monitor not in metrics:
            raise ValueError(f"monitor {monitor!r} is not among the evaluation metrics {sorted(metrics)}")
        record = {"step": self.step, "epoch": self.epoch, **metrics}
        if impossible:
            record["impossible_data"] = impossible
        self.history.evals.append(record)
        if not self.bar.disable:
            self.bar.write(f"step {self.step}: " + ", ".join(f"{k} {v:.6g}" for k, v in metrics.items()))
        problem = unusable_evaluation(metrics, impossible, count, self.step, self.epoch)
        if problem is not None:
            # NaN never compares greater: such a value would freeze "best" for ever. It takes no
            # part in early stopping, restore_best or ReduceLROnPlateau.
            if opt.on_nonfinite == "raise":
                raise NonFiniteError(problem)
            record["skipped"] = 1
            self.history.skipped_evals += 1
            self.eval_skips += 1
            if self.eval_skips > opt.max_consecutive_skips:
                raise NonFiniteError(
                    f"{self.eval_skips} consecutive non-finite evaluations (max_consecutive_skips="
                    f"{opt.max_consecutive_skips}); the last: {problem}"
                )
            return metrics, None
        self.eval_skips = 0
        value = metrics[monitor]
        if self.scheduler is not None and self._plateau():
            self.scheduler.step(value)
        mode = opt.mode or ("min" if "loss" in monitor else "max")
        best = self.history.best_value
        improved = best is None or (value > best + opt.min_delta if mode == "max" else value < best - opt.min_delta)
        if improved:
            self.history.best_step, self.history.best_value = self.step, value
            self.bad_evals = 0
            if opt.restore_best:
                # Every entry, extra state (get_extra_state) included: restore_best reloads all of it.
                self.best_state = copy_state(self.model.state_dict())
        else:
            self.bad_evals += 1
        stop = opt.patience is not None and self.bad_evals >= opt.patience
        return metrics, ("early_stopping" if stop else None)


def _on_sampled_weights(forward, batch, draws, n: int) -> tuple:
    """Forward and backward on ``n`` posterior draws; the loss and bound are their averages."""
    losses, bounds = [], []
    for _ in range(n):
        with draws(train=True):
            loss, bound = split_output(forward(batch))
            loss.backward()
        losses.append(loss.detach())
        bounds.append(bound.detach() if bound is not None else None)
    if n == 1:
        return losses[0], bounds[0]
    bound = torch.stack(bounds).mean(0) if bounds[0] is not None else None
    return torch.stack(losses).mean(), bound


def _is_factory(obj) -> bool:
    return callable(obj) and not isinstance(obj, (torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler))


def _make_optimizer(opt: FitOptions, params: list) -> torch.optim.Optimizer:
    if opt.optimizer is None:
        # Adam with torch's fused kernel where it has one: one pass over all parameters
        # instead of a dozen elementwise ops per tensor (same update, fewer dispatches).
        return fused_adam(params, lr=opt.lr)
    if isinstance(opt.optimizer, torch.optim.Optimizer):
        return opt.optimizer
    optimizer = opt.optimizer(params)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"optimizer factory returned {type(optimizer).__name__}, not a torch Optimizer")
    return optimizer
