"""The models of ``models.py`` written for NumPyro, on the same data, for fast NUTS references.

Each site is flat on the same support (``ImproperUniform``) and the log joint enters through
``numpyro.factor``, exactly as ``models.pyro_model`` does for Pyro, so NUTS explores the same
density as ``vitorch.model.Model.log_density``: NumPyro unconstrains positive sites with ``exp``
and intervals with an affine sigmoid, as torch's ``biject_to`` does.  The log joints mirror the
torch ones line by line; ``tests`` of the benchmark compare the two at random points.

References:
    Phan, Pradhan & Jankowiak, *Composable Effects for Flexible and Accelerated Probabilistic
    Programming in NumPyro* (2019).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints as C

import models as torch_models


def _np(t) -> np.ndarray:
    return np.asarray(t.detach().cpu().numpy(), dtype=np.float64)


def eight_schools_centered():
    y, s = _np(torch_models.Y8), _np(torch_models.SIGMA8)

    def log_joint(p):
        lp = dist.Normal(0.0, 5.0).log_prob(p["mu"]) + dist.HalfCauchy(5.0).log_prob(p["tau"])
        lp = lp + dist.Normal(p["mu"], p["tau"]).log_prob(p["theta"]).sum()
        return lp + dist.Normal(p["theta"], s).log_prob(y).sum()

    return {"mu": (C.real, ()), "tau": (C.positive, ()), "theta": (C.real, (8,))}, log_joint


def eight_schools_noncentered():
    y, s = _np(torch_models.Y8), _np(torch_models.SIGMA8)

    def log_joint(p):
        theta = p["mu"] + p["tau"] * p["eta"]
        lp = dist.Normal(0.0, 5.0).log_prob(p["mu"]) + dist.HalfCauchy(5.0).log_prob(p["tau"])
        lp = lp + dist.Normal(0.0, 1.0).log_prob(p["eta"]).sum()
        return lp + dist.Normal(theta, s).log_prob(y).sum()

    return {"mu": (C.real, ()), "tau": (C.positive, ()), "eta": (C.real, (8,))}, log_joint


def logistic_breast_cancer():
    x, y = (_np(t) for t in torch_models.breast_cancer_data())

    def log_joint(p):
        logits = x @ p["w"] + p["b"]
        lp = dist.Normal(0.0, 1.0).log_prob(p["w"]).sum() + dist.Normal(0.0, 5.0).log_prob(p["b"])
        return lp + dist.Bernoulli(logits=logits).log_prob(y).sum()

    return {"w": (C.real, (30,)), "b": (C.real, ())}, log_joint


def hierarchical_regression():
    group, x, y = (_np(t) for t in torch_models.hierarchical_data())
    group = group.astype(np.int64)

    def log_joint(p):
        lp = dist.Normal(0.0, 5.0).log_prob(p["mu"]) + dist.HalfNormal(2.0).log_prob(p["tau"])
        lp = lp + dist.Normal(0.0, 5.0).log_prob(p["beta"]) + dist.HalfNormal(2.0).log_prob(p["sigma"])
        lp = lp + dist.Normal(p["mu"], p["tau"]).log_prob(p["a"]).sum()
        return lp + dist.Normal(p["a"][group] + p["beta"] * x, p["sigma"]).log_prob(y).sum()

    sites = {"mu": (C.real, ()), "tau": (C.positive, ()), "beta": (C.real, ()), "sigma": (C.positive, ())}
    return {**sites, "a": (C.real, (50,))}, log_joint


def stochastic_volatility():
    r = _np(torch_models.gdp_growth())
    T = r.shape[0]
    lag = np.arange(T)[:, None] - np.arange(T)
    lower = lag >= 0

    def log_joint(p):
        mu, phi, s = p["mu"], p["phi"], p["sigma"]
        e = jnp.concatenate([p["eps"][:1] / jnp.sqrt(1 - phi**2), p["eps"][1:]])
        powers = jnp.where(lower, phi ** np.clip(lag, 0, None), 0.0)
        h = mu + s * (powers @ e)
        lp = dist.Normal(0.0, 2.0).log_prob(mu) + dist.HalfNormal(1.0).log_prob(s)
        lp = lp + dist.Normal(0.0, 1.0).log_prob(p["eps"]).sum()
        lp = lp + dist.Beta(20.0, 1.5).log_prob((phi + 1) / 2) - np.log(2.0)
        return lp + dist.Normal(0.0, jnp.exp(h / 2)).log_prob(r).sum()

    sites = {"mu": (C.real, ()), "phi": (C.interval(-1.0, 1.0), ()), "sigma": (C.positive, ())}
    return {**sites, "eps": (C.real, (T,))}, log_joint


def glmm_poisson():
    group, x, y = (_np(t) for t in torch_models.glmm_data())
    group = group.astype(np.int64)

    def log_joint(p):
        lp = dist.Normal(0.0, 2.0).log_prob(p["alpha"]) + dist.Normal(0.0, 2.0).log_prob(p["beta"])
        lp = lp + dist.HalfCauchy(1.0).log_prob(p["tau"]) + dist.Normal(0.0, 1.0).log_prob(p["z"]).sum()
        rate = p["alpha"] + p["beta"] * x + (p["tau"] * p["z"])[group]
        return lp + dist.Poisson(jnp.exp(rate)).log_prob(y).sum()

    sites = {"alpha": (C.real, ()), "beta": (C.real, ()), "tau": (C.positive, ())}
    return {**sites, "z": (C.real, (30,))}, log_joint


def item_response():
    y = _np(torch_models.item_response_data())

    def log_joint(p):
        lp = dist.Normal(0.0, 1.0).log_prob(p["ability"]).sum() + dist.Cauchy(0.0, 5.0).log_prob(p["mu"])
        lp = lp + dist.HalfCauchy(5.0).log_prob(p["scale"])
        lp = lp + dist.Normal(p["mu"], p["scale"]).log_prob(p["difficulty"]).sum()
        logits = p["ability"][:, None] - p["difficulty"][None, :]
        return lp + dist.Bernoulli(logits=logits).log_prob(y).sum()

    sites = {"mu": (C.real, ()), "scale": (C.positive, ())}
    return {**sites, "ability": (C.real, (100,)), "difficulty": (C.real, (20,))}, log_joint


MODELS = {
    "eight_schools_centered": eight_schools_centered,
    "eight_schools_noncentered": eight_schools_noncentered,
    "logistic_breast_cancer": logistic_breast_cancer,
    "hierarchical_regression": hierarchical_regression,
    "stochastic_volatility": stochastic_volatility,
    "glmm_poisson": glmm_poisson,
    "item_response": item_response,
}


def numpyro_model(name: str):
    """A NumPyro model (flat sites plus ``numpyro.factor``) and its site names in order."""
    sites, log_joint = MODELS[name]()

    def fn():
        values = {
            site: numpyro.sample(site, dist.ImproperUniform(support, (), shape))
            for site, (support, shape) in sites.items()
        }
        numpyro.factor("log_joint", log_joint(values))

    return fn, list(sites)
