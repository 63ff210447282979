"""Training a global posterior through vt.fit without a data set: VI(model, guide) and fit(data=None)."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal

import vitorch as vt
from vitorch.model import VI, AutoGuide, Model, Site

Y = torch.tensor([0.8, 1.9, 1.1, 1.6, 0.4])
PRIOR_SD, NOISE_SD = 2.0, 0.5


def _conjugate():
    """mu ~ N(0, 2^2), y_i ~ N(mu, 0.5^2): the posterior of mu is Gaussian in closed form."""

    def log_joint(p):
        return Normal(0.0, PRIOR_SD).log_prob(p["mu"]) + Normal(p["mu"].unsqueeze(-1), NOISE_SD).log_prob(Y).sum(-1)

    precision = 1 / PRIOR_SD**2 + len(Y) / NOISE_SD**2
    return Model(log_joint, {"mu": Site()}), (Y.sum() / NOISE_SD**2 / precision).item(), precision**-0.5


def test_forward_is_vt_loss_and_fit_needs_no_data():
    model, _, _ = _conjugate()
    vi = VI(model, AutoGuide(model, "diag"), num_particles=4)
    out = vi()
    assert isinstance(out, vt.LossOutput) and out.bound.shape == () and out.log_w.shape == (4,)
    history = vt.fit(vi, None, steps=30, progress=False)
    assert len(history.steps) == 30 and all("bound" in r for r in history.steps)
    assert history.steps[0]["lr"] == 0.02  # the guide's default_lr
    assert history.stop_reason == "steps"


def test_stl_fit_reaches_the_exact_posterior():
    model, mean, sd = _conjugate()
    guide = AutoGuide(model, "full")
    vi = VI(model, guide, num_particles=4, estimator=vt.estimators.stl)
    vi.fit(steps=600, lr=0.05, progress=False, seed=0)
    # STL's gradient vanishes at the exact posterior, so Adam settles on it (no Monte Carlo floor).
    q = guide()
    assert abs(q.mean.item() - mean) < 0.01 * sd
    assert abs(q.variance.sqrt().item() - sd) < 0.01 * sd


def test_model_parameters_train_with_the_guide():
    class LogJoint(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.log_noise = torch.nn.Parameter(torch.zeros(()))

        def forward(self, p):
            prior = Normal(0.0, PRIOR_SD).log_prob(p["mu"])
            return prior + Normal(p["mu"].unsqueeze(-1), self.log_noise.exp()).log_prob(Y).sum(-1)

    model = Model(LogJoint(), {"mu": Site()})
    vi = VI(model, AutoGuide(model, "diag"), num_particles=4)
    assert {n for n, _ in vi.named_parameters()} == {"model.log_joint.log_noise", "guide.loc", "guide.log_scale"}
    before = model.log_joint.log_noise.item()
    vi.fit(steps=20, progress=False)
    assert model.log_joint.log_noise.item() != before


def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(tmp_path):
    def run(**kw):
        torch.manual_seed(0)
        model, _, _ = _conjugate()
        guide = AutoGuide(model, "lowrank")
        vi = VI(model, guide, num_particles=2)
        vi.fit(seed=0, progress=False, **kw)
        return guide

    full = run(steps=20)
    run(steps=10, checkpoint_dir=tmp_path)
    resumed = run(steps=20, resume=tmp_path)
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_threads_option_restores_the_setting():
    model, _, _ = _conjugate()
    before = torch.get_num_threads()
    VI(model, AutoGuide(model, "diag")).fit(steps=2, threads=1, progress=False)
    assert torch.get_num_threads() == before


def test_bad_set_ups_fail_at_construction():
    model, _, _ = _conjugate()
    guide = AutoGuide(model, "diag")
    with pytest.raises(ValueError, match="stl is unbiased only"):
        VI(model, guide, 4, vt.objectives.iwae, vt.estimators.stl)
    with pytest.raises(ValueError, match="event shape"):
        other = Model(lambda p: Normal(0.0, 1.0).log_prob(p["a"]).sum(-1), {"a": Site(shape=(2,))})
        VI(model, AutoGuide(other, "diag"))
    with pytest.raises(TypeError, match="Model"):
        VI(guide, guide)
    vi = VI(model, guide)
    with pytest.raises(ValueError, match="needs steps"):
        vt.fit(vi, None, epochs=3)
