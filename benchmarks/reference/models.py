"""The standard posteriors of the model-layer benchmark, each a ``vitorch.model.Model`` on bundled or seeded data.

=======================  ====  =========================================================================
name                     D     model
=======================  ====  =========================================================================
eight_schools_centered    10   Rubin (1981); theta_j ~ N(mu, tau^2): a funnel in (log tau, theta)
eight_schools_noncentered 10   the same with theta_j = mu + tau eta_j
logistic_breast_cancer    31   scikit-learn's Wisconsin breast cancer (569 x 30, standardized), N(0, 1) prior
hierarchical_regression   54   50 groups x 8 observations (seeded): y = a_j + b x + e, a_j ~ N(mu, tau^2)
stochastic_volatility    205   statsmodels' US real GDP growth (1959-2009, 202 quarters), non-centred AR(1)
glmm_poisson              32   30 groups x 10 counts (seeded), log-linear random intercepts
item_response            121   Rasch model, 100 students x 20 items (seeded), abilities ~ N(0, 1)
=======================  ====  =========================================================================

``pyro_model(model)`` turns any of them into a Pyro model (improper-uniform sites plus
``pyro.factor``), so Pyro's autoguides and NUTS run on exactly the same density.

References:
    Rubin, *Estimation in Parallel Randomized Experiments* (1981); Kim, Shephard & Chib,
    *Stochastic Volatility* (Rev. Econ. Stud. 1998); Rasch (1960); Gelman & Hill,
    *Data Analysis Using Regression and Multilevel/Hierarchical Models* (2007).
"""

from __future__ import annotations

import math

import torch
from torch.distributions import Bernoulli, Cauchy, HalfCauchy, HalfNormal, Normal, Poisson
from torch.distributions import constraints as C

from vitorch.model import Model, Site

Y8 = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA8 = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def eight_schools_centered() -> Model:
    def log_joint(p):
        prior = Normal(0.0, 5.0).log_prob(p["mu"]) + HalfCauchy(5.0).log_prob(p["tau"])
        prior = prior + Normal(p["mu"][..., None], p["tau"][..., None]).log_prob(p["theta"]).sum(-1)
        return prior + Normal(p["theta"], SIGMA8).log_prob(Y8).sum(-1)

    return Model(log_joint, {"mu": Site(), "tau": Site(constraint=C.positive), "theta": Site(shape=(8,))})


def eight_schools_noncentered() -> Model:
    def log_joint(p):
        theta = p["mu"][..., None] + p["tau"][..., None] * p["eta"]
        prior = Normal(0.0, 5.0).log_prob(p["mu"]) + HalfCauchy(5.0).log_prob(p["tau"])
        prior = prior + Normal(0.0, 1.0).log_prob(p["eta"]).sum(-1)
        return prior + Normal(theta, SIGMA8).log_prob(Y8).sum(-1)

    return Model(log_joint, {"mu": Site(), "tau": Site(constraint=C.positive), "eta": Site(shape=(8,))})


def breast_cancer_data() -> tuple[torch.Tensor, torch.Tensor]:
    """``x [569, 30]`` standardized features, ``y [569]`` labels."""
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    x = torch.as_tensor(x, dtype=torch.get_default_dtype())
    x = (x - x.mean(0)) / x.std(0)
    return x, torch.as_tensor(y, dtype=x.dtype)


def logistic_breast_cancer() -> Model:
    x, y = breast_cancer_data()

    def log_joint(p):
        logits = p["w"] @ x.T + p["b"][..., None]
        return (
            Normal(0.0, 1.0).log_prob(p["w"]).sum(-1)
            + Normal(0.0, 5.0).log_prob(p["b"])
            + (Bernoulli(logits=logits).log_prob(y).sum(-1))
        )

    return Model(log_joint, {"w": Site(shape=(30,)), "b": Site()})


def hierarchical_data(groups: int = 50, per_group: int = 8):
    """``(group [n], x [n], y [n])`` with ``n = groups * per_group`` (seeded)."""
    g = torch.Generator().manual_seed(1)
    group = torch.arange(groups).repeat_interleave(per_group)
    x = torch.randn(groups * per_group, generator=g)
    a = 1.0 + 0.7 * torch.randn(groups, generator=g)
    return group, x, a[group] + 0.5 * x + 0.8 * torch.randn(groups * per_group, generator=g)


def hierarchical_regression(groups: int = 50, per_group: int = 8) -> Model:
    group, x, y = hierarchical_data(groups, per_group)

    def log_joint(p):
        prior = Normal(0.0, 5.0).log_prob(p["mu"]) + HalfNormal(2.0).log_prob(p["tau"])
        prior = prior + Normal(0.0, 5.0).log_prob(p["beta"]) + HalfNormal(2.0).log_prob(p["sigma"])
        prior = prior + Normal(p["mu"][..., None], p["tau"][..., None]).log_prob(p["a"]).sum(-1)
        mean = p["a"][..., group] + p["beta"][..., None] * x
        return prior + Normal(mean, p["sigma"][..., None]).log_prob(y).sum(-1)

    sites = {"mu": Site(), "tau": Site(constraint=C.positive), "beta": Site(), "sigma": Site(constraint=C.positive)}
    return Model(log_joint, {**sites, "a": Site(shape=(groups,))})


def gdp_growth() -> torch.Tensor:
    """``[202]`` demeaned quarterly growth of US real GDP (statsmodels' macrodata), in percent."""
    import statsmodels.api as sm

    gdp = torch.tensor(sm.datasets.macrodata.load_pandas().data["realgdp"].to_numpy())
    r = 100 * (gdp[1:].log() - gdp[:-1].log())
    return (r - r.mean()).to(torch.get_default_dtype())


def stochastic_volatility() -> Model:
    r = gdp_growth()
    T = r.shape[0]

    lag = torch.arange(T)[:, None] - torch.arange(T)  # [T, T] t - k
    lower = lag >= 0

    def log_joint(p):
        mu, phi, s = p["mu"], p["phi"], p["sigma"]
        # h_t = mu + s x_t with x_t = phi x_{t-1} + eps_t and x_1 = eps_1 / sqrt(1 - phi^2), i.e.
        # x = Phi e with Phi[t, k] = phi^(t - k) (k <= t): one matrix product instead of a T-step loop.
        e = torch.cat([p["eps"][..., :1] / (1 - phi[..., None] ** 2).sqrt(), p["eps"][..., 1:]], -1)
        powers = torch.where(lower, phi[..., None, None] ** lag.clamp_min(0).to(phi.dtype), 0.0)  # [*, T, T]
        h = mu[..., None] + s[..., None] * (powers @ e.unsqueeze(-1)).squeeze(-1)
        prior = (
            Normal(0.0, 2.0).log_prob(mu) + HalfNormal(1.0).log_prob(s) + Normal(0.0, 1.0).log_prob(p["eps"]).sum(-1)
        )
        prior = prior + torch.distributions.Beta(20.0, 1.5).log_prob((phi + 1) / 2) - math.log(2.0)
        return prior + Normal(0.0, (h / 2).exp()).log_prob(r).sum(-1)

    sites = {"mu": Site(), "phi": Site(constraint=C.interval(-1.0, 1.0)), "sigma": Site(constraint=C.positive)}
    return Model(log_joint, {**sites, "eps": Site(shape=(T,))})


def glmm_data(groups: int = 30, per_group: int = 10):
    """``(group [n], x [n], y [n])`` counts with random intercepts (seeded)."""
    g = torch.Generator().manual_seed(2)
    group = torch.arange(groups).repeat_interleave(per_group)
    x = torch.randn(groups * per_group, generator=g)
    u = 0.6 * torch.randn(groups, generator=g)
    return group, x, torch.poisson((0.5 + 0.3 * x + u[group]).exp(), generator=g)


def glmm_poisson(groups: int = 30, per_group: int = 10) -> Model:
    group, x, y = glmm_data(groups, per_group)

    def log_joint(p):
        prior = Normal(0.0, 2.0).log_prob(p["alpha"]) + Normal(0.0, 2.0).log_prob(p["beta"])
        prior = prior + HalfCauchy(1.0).log_prob(p["tau"]) + Normal(0.0, 1.0).log_prob(p["z"]).sum(-1)
        rate = p["alpha"][..., None] + p["beta"][..., None] * x + (p["tau"][..., None] * p["z"])[..., group]
        return prior + Poisson(rate.exp()).log_prob(y).sum(-1)

    sites = {"alpha": Site(), "beta": Site(), "tau": Site(constraint=C.positive)}
    return Model(log_joint, {**sites, "z": Site(shape=(groups,))})


def item_response_data(students: int = 100, items: int = 20) -> torch.Tensor:
    """``[students, items]`` binary answers of a Rasch model (seeded)."""
    g = torch.Generator().manual_seed(3)
    ability = torch.randn(students, generator=g)
    difficulty = 0.8 * torch.randn(items, generator=g)
    return torch.bernoulli(torch.sigmoid(ability[:, None] - difficulty), generator=g)


def item_response(students: int = 100, items: int = 20) -> Model:
    y = item_response_data(students, items)

    def log_joint(p):
        prior = Normal(0.0, 1.0).log_prob(p["ability"]).sum(-1) + Cauchy(0.0, 5.0).log_prob(p["mu"])
        prior = prior + HalfCauchy(5.0).log_prob(p["scale"])
        prior = prior + Normal(p["mu"][..., None], p["scale"][..., None]).log_prob(p["difficulty"]).sum(-1)
        logits = p["ability"][..., :, None] - p["difficulty"][..., None, :]
        return prior + Bernoulli(logits=logits).log_prob(y).sum((-2, -1))

    sites = {"mu": Site(), "scale": Site(constraint=C.positive)}
    return Model(log_joint, {**sites, "ability": Site(shape=(students,)), "difficulty": Site(shape=(items,))})


MODELS = {
    "eight_schools_centered": eight_schools_centered,
    "eight_schools_noncentered": eight_schools_noncentered,
    "logistic_breast_cancer": logistic_breast_cancer,
    "hierarchical_regression": hierarchical_regression,
    "stochastic_volatility": stochastic_volatility,
    "glmm_poisson": glmm_poisson,
    "item_response": item_response,
}


def pyro_model(model: Model):
    """A Pyro model with the same density: each site flat on its support (an ``ImproperUniform``
    whose ``sample()`` gives the model's starting value, which Pyro's autoguides read to set
    themselves up), then ``pyro.factor`` of the log joint.  Pyro's autoguides and NUTS
    unconstrain it with the same ``biject_to`` maps."""
    import pyro
    import pyro.distributions as dist

    start = {k: v[0] for k, v in model.constrain(model.init().unsqueeze(0)).items()}

    class Flat(dist.ImproperUniform):
        def __init__(self, support, event_shape, value):
            super().__init__(support, torch.Size(), event_shape)
            self.value = value

        def sample(self, sample_shape=()):
            return self.value.expand(torch.Size(sample_shape) + self.value.shape)

    def fn():
        values = {
            name: pyro.sample(name, Flat(site.constraint, site.shape, start[name]))
            for name, site in model.sites.items()
        }
        pyro.factor("log_joint", model.log_joint(values))

    return fn
