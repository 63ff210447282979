"""What ``check_family``'s ``make_family`` may return, and how its parameters are found, saved and loaded.

``make_family()`` returns one of

* a family ``q``: its parameters are the leaf tensors with ``requires_grad`` that it
  holds (directly, or as views such as an ``expand``); for a `vitorch.Flow`
  also its transforms' parameters and its base's;
* ``(q, params)``: ``params`` an ``nn.Module``, a dict ``{name: tensor}`` or a sequence
  of tensors, the leaves ``q`` was built from;
* ``(module, context)``: an ``nn.Module`` whose call ``module(context)`` (``module()``
  when ``context`` is ``None``) returns the family, e.g. an amortized head or a
  `vitorch.flows.ConditionalFlow`; the parameters are the module's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent

from ..families import Flow

__all__ = ["Built", "build", "load_values", "saved_values"]


@dataclass
class Built:
    """One call of ``make_family``: the family, its named parameters, and how to rebuild it."""

    family: Distribution
    params: dict[str, Tensor]
    module: nn.Module | None = None  # the (module, context) form, or (q, module)
    context: object = None
    callable_module: bool = False  # True for (module, context): the family is module(context)


def _leaf(t: Tensor) -> Tensor | None:
    """The leaf tensor with ``requires_grad`` behind ``t`` (``t`` itself or the base of a view)."""
    while not t.is_leaf and t._base is not None:
        t = t._base
    return t if t.is_leaf and t.requires_grad else None


def _found(q: Distribution, prefix: str, out: dict[str, Tensor], seen: set[int]) -> None:
    if isinstance(q, Flow):
        for i, t in enumerate(q.transforms):
            for name, p in t.named_parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    out[f"{prefix}transforms.{i}.{name}"] = p
        _found(q.base, f"{prefix}base.", out, seen)
        if isinstance(q.context, Tensor) and (leaf := _leaf(q.context)) is not None and id(leaf) not in seen:
            seen.add(id(leaf))
            out[f"{prefix}context"] = leaf
        return
    if isinstance(q, Independent):
        _found(q.base_dist, f"{prefix}base_dist.", out, seen)
        return
    for name, value in sorted(vars(q).items()):
        if isinstance(value, Tensor) and (leaf := _leaf(value)) is not None and id(leaf) not in seen:
            seen.add(id(leaf))
            out[f"{prefix}{name.lstrip('_')}"] = leaf


def build(make_family) -> Built:
    """Call ``make_family()`` and sort out what it returned."""
    made = make_family()
    if isinstance(made, Distribution):
        params: dict[str, Tensor] = {}
        _found(made, "", params, set())
        return Built(made, params)
    if not (isinstance(made, tuple) and len(made) == 2):
        raise TypeError(
            f"make_family() must return a family, (family, params) or (module, context); got {type(made).__name__}"
        )
    first, second = made
    if isinstance(first, Distribution):
        if isinstance(second, nn.Module):
            named = {k: p for k, p in second.named_parameters() if p.requires_grad}
            return Built(first, named, module=second)
        if isinstance(second, Mapping):
            named = dict(second)
        elif isinstance(second, Sequence) or isinstance(second, Tensor):
            named = {f"params[{i}]": p for i, p in enumerate([second] if isinstance(second, Tensor) else second)}
        else:
            raise TypeError(
                f"make_family(): params must be an nn.Module, a dict or a sequence of tensors; got "
                f"{type(second).__name__}"
            )
        bad = [k for k, p in named.items() if not (isinstance(p, Tensor) and p.is_leaf and p.requires_grad)]
        if bad:
            raise TypeError(f"make_family(): params must be leaf tensors with requires_grad=True; not so: {bad}")
        return Built(first, named)
    if isinstance(first, nn.Module):
        family = first() if second is None else first(second)
        if not isinstance(family, Distribution):
            raise TypeError(f"make_family(): module(context) returned {type(family).__name__}, not a Distribution")
        named = {k: p for k, p in first.named_parameters() if p.requires_grad}
        return Built(family, named, module=first, context=second, callable_module=True)
    raise TypeError(
        "make_family() must return a family, (family, params) or (module, context); "
        f"got a tuple of {type(first).__name__} and {type(second).__name__}"
    )


def saved_values(built: Built) -> dict:
    """What a user saves: the module's ``state_dict`` if there is one, else the parameter tensors."""
    if built.module is not None:
        return built.module.state_dict()
    return {k: p.detach() for k, p in built.params.items()}


@torch.no_grad()
def load_values(built: Built, state: dict, context: object = None) -> Distribution:
    """Load ``state`` (from `saved_values` of another copy) into ``built``; return the family to compare.

    A ``(module, context)`` family is rebuilt as ``module(context)`` with the given
    ``context`` (the first copy's: a context is an input, not state).
    """
    if built.module is not None:
        built.module.load_state_dict(state)
        if built.callable_module:
            return built.module() if context is None else built.module(context)
        return built.family
    if set(state) != set(built.params):
        raise ValueError(
            f"parameters differ between two calls of make_family: {sorted(state)} vs {sorted(built.params)}"
        )
    for k, p in built.params.items():
        if p.shape != state[k].shape:
            raise ValueError(
                f"parameter {k} has shape {tuple(p.shape)} in one call and {tuple(state[k].shape)} in another"
            )
        p.copy_(state[k])
    return built.family
