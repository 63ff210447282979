"""``ModelTestCase``: the protocol battery every vitorch model passes, as a pytest base class.

A model's test subclasses it, names two hooks, and inherits the tests::

    class TestMyModelProtocol(ModelTestCase):
        def make_model(self):
            return MyModel(...)

        def make_data(self):
            return torch.randn(16, 3)           # or a tuple of tensors sharing dim 0

The protocol (one convention for every model): ``model(batch)`` returns a
`vitorch.LossOutput` whose ``loss`` is a scalar, minus the per-datum mean of
``bound [B]`` for a lower bound (``bound_i`` is datum ``i``'s share of the full-data
bound, so ``N * mean(bound)`` estimates it); the model trains through
`vitorch.fit`, checkpoints and resumes bit for bit, survives a ``state_dict``
round trip, and has a ``predict`` method.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from ..loss import LossOutput
from ..training import History, fit
from ._state import Z, round_trip, snapshot, state_differences, t_quantile

__all__ = ["ModelTestCase"]


class _Interrupt(Exception):
    """Raised by a callback to cut a run short, as a crash would."""


def _rows(data, n: int):
    """The first ``n`` rows of a tensor or of each tensor in a tuple."""
    if isinstance(data, Tensor):
        return data[:n]
    return tuple(t[:n] for t in data)


def _num_rows(data) -> int:
    return data.shape[0] if isinstance(data, Tensor) else data[0].shape[0]


class ModelTestCase:
    """Base class of a model's protocol tests (a plain class: pytest collects its subclasses' ``test_*``).

    Hooks (override in the subclass):
        make_model(self) -> nn.Module: a small model.  Called afresh for every run,
            after ``torch.manual_seed(seed)``, so two calls with one seed give the same
            initial state.
        make_data(self): a data set `vitorch.fit` accepts, a tensor ``[N, ...]``
            or a tuple of tensors sharing dimension 0.  Keep ``N`` small (8-64 rows).
        exact_log_evidence(self, model, batch) -> Tensor | None: ``[N]`` per-datum exact
            log evidence of ``batch`` under ``model``'s current parameters, or ``None``
            (the default) when there is no closed form; the bound test is then skipped.
            It is called with the whole data set, and only the mean over it is compared:
            ``mean(bound) <= mean(exact)``.  For local latents pass ``log p(x_i)``; for
            global latents (a GP, a Bayesian last layer) pass ``log p(Y) / N`` in every
            entry, since only the full-data bound ``N * mean(bound)`` bounds ``log p(Y)``.
        predict_args(self, batch) -> tuple | None: arguments for ``model.predict``; when
            given, ``predict`` is called and must give the same outputs after a
            ``state_dict`` round trip.

    Attributes (override as class attributes):
        batch_size: the batch size of every `vitorch.fit` run and of the
            single-batch tests (the first ``batch_size`` rows).
        seed: the seed behind every model, fit and draw.
        fit_kwargs: extra keyword arguments for every `vitorch.fit` call
            (e.g. ``{"lr": 1e-2}``); the tests set ``steps``, ``batch_size``, ``seed``,
            checkpoints and callbacks themselves.
        no_grad_parameters: names (as in ``named_parameters()``) of parameters that
            legitimately receive no gradient from ``loss`` (e.g. one fitted in closed
            form); every other parameter with ``requires_grad`` must get a finite one.
        bound_kind: ``"lower"`` (``loss = -mean(bound)``, ``bound <= log evidence``) or
            ``"upper"`` (``loss = +mean(bound)``, ``bound >= log evidence``, e.g. CUBO).
        loss_equals_bound: set ``False`` when ``loss`` adds terms to the bound (a
            regularizer), which skips only the ``loss == -mean(bound)`` check.
        bound_draws: forward passes averaged by the bound test (its standard error
            comes from their spread).

    Tests inherited: `test_forward_returns_loss_output`,
    `test_every_parameter_gets_a_finite_gradient`,
    `test_bound_respects_exact_log_evidence`, `test_fit_three_steps`,
    `test_checkpoint_resume_is_bit_identical`, `test_restore_best_restores_every_state`,
    `test_state_dict_round_trip`, `test_has_predict`.

    References:
        Blei, Kucukelbir & McAuliffe, *Variational Inference: A Review for Statisticians* (JASA 2017):
        the bound below the log evidence.
        Burda, Grosse & Salakhutdinov, *Importance Weighted Autoencoders* (ICLR 2016).
    """

    batch_size: int = 8
    seed: int = 0
    fit_kwargs: dict = {}
    no_grad_parameters: tuple[str, ...] = ()
    bound_kind: str = "lower"
    loss_equals_bound: bool = True
    bound_draws: int = 100

    # ----- hooks -------------------------------------------------------------------

    def make_model(self) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__} must implement make_model(self) -> nn.Module")

    def make_data(self):
        raise NotImplementedError(f"{type(self).__name__} must implement make_data(self) -> tensor or tuple of tensors")

    def exact_log_evidence(self, model: nn.Module, batch) -> Tensor | None:
        return None

    def predict_args(self, batch) -> tuple | None:
        return None

    # ----- helpers -----------------------------------------------------------------

    def _model(self, seed_offset: int = 0) -> nn.Module:
        torch.manual_seed(self.seed + seed_offset)
        model = self.make_model()
        if not isinstance(model, nn.Module):
            raise TypeError(f"make_model() must return an nn.Module; got {type(model).__name__}")
        return model

    def _data(self):
        data = self.make_data()
        data = tuple(data) if isinstance(data, list) else data
        if not (
            isinstance(data, Tensor) or (isinstance(data, tuple) and data and all(isinstance(t, Tensor) for t in data))
        ):
            raise TypeError(f"make_data() must return a tensor or a tuple of tensors; got {type(data).__name__}")
        return data

    def _batch(self):
        return _rows(self._data(), self.batch_size)

    def _fit(self, model: nn.Module, data, **options) -> History:
        kwargs = {"batch_size": self.batch_size, "seed": self.seed, "progress": False}
        kwargs.update(self.fit_kwargs)
        kwargs.update(options)
        return fit(model, data, **kwargs)

    def _forward(self, model: nn.Module, batch, seed: int) -> LossOutput:
        torch.manual_seed(seed)
        out = model(batch)
        assert isinstance(out, LossOutput), (
            f"forward(batch) must return a vitorch.LossOutput (the model protocol); got {type(out).__name__}"
        )
        return out

    # ----- tests -------------------------------------------------------------------

    def test_forward_returns_loss_output(self):
        """``forward(batch)``: a scalar finite loss, a finite ``bound [B]``, and ``loss = -+mean(bound)``."""
        model, batch = self._model(), self._batch()
        n = _num_rows(batch)
        out = self._forward(model, batch, self.seed)
        assert out.loss.dim() == 0, f"LossOutput.loss must be a scalar; got shape {tuple(out.loss.shape)}"
        assert bool(torch.isfinite(out.loss)), f"LossOutput.loss is not finite: {out.loss.item()}"
        assert out.loss.requires_grad, "LossOutput.loss carries no gradient (was the forward run under no_grad?)"
        bound = out.bound
        assert isinstance(bound, Tensor) and bound.shape == (n,), (
            f"LossOutput.bound must be [B] = [{n}] (one value per datum); got "
            f"{tuple(bound.shape) if isinstance(bound, Tensor) else type(bound).__name__}"
        )
        assert not bound.requires_grad, "LossOutput.bound must be detached"
        assert bool(torch.isfinite(bound).all()), f"LossOutput.bound has non-finite entries: {bound.tolist()}"
        if self.loss_equals_bound:
            sign = -1.0 if self.bound_kind == "lower" else 1.0
            expected = sign * bound.mean()
            # Rounding of a mean of n terms: n eps relative to the terms' magnitude.
            eps = torch.finfo(bound.dtype).eps
            tol = 4 * n * eps * float(bound.abs().mean()) + 4 * eps
            assert abs(out.loss.item() - expected.item()) <= tol, (
                f"loss must equal {'-' if sign < 0 else '+'}mean(bound) for a {self.bound_kind} bound: "
                f"loss {out.loss.item():.10g}, {'-' if sign < 0 else '+'}mean(bound) {expected.item():.10g} "
                f"(tolerance {tol:.3g}); set loss_equals_bound = False if the loss adds other terms"
            )

    def test_every_parameter_gets_a_finite_gradient(self):
        """``loss.backward()`` reaches every trainable parameter (except ``no_grad_parameters``), finitely."""
        model, batch = self._model(), self._batch()
        names = dict(model.named_parameters())
        unknown = [n for n in self.no_grad_parameters if n not in names]
        assert not unknown, f"no_grad_parameters names parameters the model does not have: {unknown}"
        model.train()
        self._forward(model, batch, self.seed).loss.backward()
        missing, bad = [], []
        for name, p in names.items():
            if not p.requires_grad:
                continue
            if p.grad is None:
                if name not in self.no_grad_parameters:
                    missing.append(name)
            elif not bool(torch.isfinite(p.grad).all()):
                bad.append(f"{name} ({int((~torch.isfinite(p.grad)).sum())} of {p.grad.numel()} entries)")
        assert not missing, (
            f"parameters with requires_grad got no gradient from loss: {missing} "
            "(list those that legitimately get none in no_grad_parameters)"
        )
        assert not bad, f"non-finite gradients: {bad}"

    def test_bound_respects_exact_log_evidence(self):
        """``mean(bound) <= mean(exact log evidence)`` (``>=`` for an upper bound), within Z standard errors.

        The bound is a random variable: its mean over ``bound_draws`` forward passes is
        compared with a one-sided threshold of ``t * se`` (``t``: the Student-t quantile
        of the two-sided ``Z = 5.2`` normal one, for the standard error estimated from
        the same draws), plus a rounding allowance ``sqrt(eps) (1 + |log p|)`` that alone
        remains for a closed-form (deterministic) bound.
        """
        model, data = self._model(), self._data()
        model.eval()
        with torch.no_grad():
            exact = self.exact_log_evidence(model, data)
            if exact is None:
                pytest.skip("exact_log_evidence is not given for this model")
            n = _num_rows(data)
            assert exact.shape == (n,), f"exact_log_evidence must return [N] = [{n}]; got {tuple(exact.shape)}"
            target = exact.to(torch.float64).mean()
            draws = torch.stack(
                [
                    self._forward(model, data, self.seed + r).bound.to(torch.float64).mean()
                    for r in range(self.bound_draws)
                ]
            )
        mean = draws.mean()
        se = draws.std() / math.sqrt(self.bound_draws) if self.bound_draws > 1 else draws.new_zeros(())
        threshold = t_quantile(Z, self.bound_draws - 1) * float(se)
        eps = torch.finfo(exact.dtype).eps
        threshold += math.sqrt(eps) * (1 + abs(float(target)))
        gap = float(mean - target) if self.bound_kind == "lower" else float(target - mean)
        word = "above" if self.bound_kind == "lower" else "below"
        assert gap <= threshold, (
            f"the {self.bound_kind} bound lies {word} the exact log evidence: mean bound {float(mean):.8g} "
            f"(standard error {float(se):.3g} over {self.bound_draws} draws), exact {float(target):.8g}, "
            f"excess {gap:.3g} > allowed {threshold:.3g}"
        )

    def test_fit_three_steps(self):
        """Three steps of `vitorch.fit` run and return a `History` with three finite records."""
        model, data = self._model(), self._data()
        history = self._fit(model, data, steps=3)
        assert isinstance(history, History), f"fit returned {type(history).__name__}, not a History"
        assert len(history.steps) == 3, f"fit(steps=3) recorded {len(history.steps)} steps"
        losses = [r["loss"] for r in history.steps]
        assert all(math.isfinite(v) for v in losses), f"non-finite losses in fit: {losses}"
        assert all("bound" in r for r in history.steps), "fit recorded no bound: forward must return a LossOutput"
        for name, p in model.named_parameters():
            assert bool(torch.isfinite(p).all()), f"parameter {name} is not finite after three fit steps"

    def test_checkpoint_resume_is_bit_identical(self):
        """A run interrupted after its step-2 checkpoint and resumed ends bit for bit where an uninterrupted one does.

        Every ``state_dict`` entry is compared, extra state (``get_extra_state``) and buffers included.
        """
        data = self._data()
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            model = self._model()
            full = self._fit(model, data, steps=4, checkpoint_dir=tmp / "full", checkpoint_every=2)
            reference = snapshot(model.state_dict())

            def interrupt(ctx):
                if ctx.step == 3:
                    raise _Interrupt

            model = self._model()
            with pytest.raises(_Interrupt):
                self._fit(model, data, steps=4, checkpoint_dir=tmp / "cut", checkpoint_every=2, callbacks=[interrupt])
            model = self._model(seed_offset=1)  # another initial state: everything must come from the file
            torch.manual_seed(self.seed + 12345)
            resumed = self._fit(
                model, data, steps=4, checkpoint_dir=tmp / "cut", checkpoint_every=2, resume=tmp / "cut"
            )
        diffs = state_differences(model.state_dict(), reference)
        assert not diffs, "resumed run differs from the uninterrupted one:\n  " + "\n  ".join(diffs[:12])
        assert [r["loss"] for r in resumed.steps] == [r["loss"] for r in full.steps], (
            "resumed run recorded other losses than the uninterrupted one"
        )

    def test_restore_best_restores_every_state(self):
        """``fit(restore_best=True)`` ends with the state (extra state and buffers included) of its best evaluation."""
        model, data = self._model(), self._data()
        states = {}

        def keep(ctx):
            states[ctx.step] = snapshot(ctx.model.state_dict())

        history = self._fit(
            model, data, steps=3, eval_data=data, eval_every=1, restore_best=True, patience=None, callbacks=[keep]
        )
        assert history.best_step in states, f"best step {history.best_step} was not among the evaluated steps"
        diffs = state_differences(model.state_dict(), states[history.best_step])
        assert not diffs, f"restore_best did not restore step {history.best_step}'s state:\n  " + "\n  ".join(
            diffs[:12]
        )

    def test_state_dict_round_trip(self):
        """``torch.save`` / ``torch.load(weights_only=True)`` of ``state_dict`` into a fresh model keeps its outputs.

        Loaded into a model built from another seed, the same draws give the same loss and
        bound bit for bit (and the same ``predict`` outputs when ``predict_args`` is given).
        """
        model, batch = self._model(), self._batch()
        model.eval()
        state = round_trip(model.state_dict())
        other = self._model(seed_offset=1)
        other.load_state_dict(state)
        other.eval()
        diffs = state_differences(other.state_dict(), model.state_dict())
        assert not diffs, "state_dict changed in a save/load round trip:\n  " + "\n  ".join(diffs[:12])
        with torch.no_grad():
            a, b = self._forward(model, batch, self.seed), self._forward(other, batch, self.seed)
            diffs = state_differences({"loss": a.loss, "bound": a.bound}, {"loss": b.loss, "bound": b.bound})
            assert not diffs, "forward differs after a state_dict round trip:\n  " + "\n  ".join(diffs)
            args = self.predict_args(batch)
            if args is not None:
                torch.manual_seed(self.seed)
                pa = model.predict(*args)
                torch.manual_seed(self.seed)
                pb = other.predict(*args)
                diffs = state_differences(snapshot(_plain(pa)), snapshot(_plain(pb)))
                assert not diffs, "predict differs after a state_dict round trip:\n  " + "\n  ".join(diffs)

    def test_has_predict(self):
        """Predictions go through a method named ``predict`` (the model protocol)."""
        model = self._model()
        assert callable(getattr(model, "predict", None)), f"{type(model).__name__} has no predict method"


def _plain(obj):
    """Tensors of a prediction (a tensor, a tuple, a dict or a distribution's mean and variance)."""
    if isinstance(obj, (Tensor, dict, list, tuple)):
        return obj
    if isinstance(obj, torch.distributions.Distribution):
        return {"mean": obj.mean, "variance": obj.variance}
    fields = getattr(obj, "_asdict", None)
    return dict(fields()) if fields is not None else vars(obj)
