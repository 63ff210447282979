"""Audit of the public API's docstrings (issue #9): every public name documents itself.

For every class and function exported through an ``__all__`` (or a lazy export table)
of the public packages, three things are checked, each as its own test so a failure
names the culprit:

1. it has its *own* docstring — not one inherited from a base class or, for an
   exported instance such as ``vt.objectives.iwae``, from a base of its class;
2. the docstring (for a class, the class docstring together with its own
   ``__init__`` docstring) cites where the method comes from: a ``References:``
   section whose body names a year, an arXiv id, a DOI or a URL, or an inline
   citation such as ``Titsias (2009)``, ``Hensman et al., 2013``, an arXiv id or a DOI;
3. if the name takes or returns tensors (a ``Tensor`` annotation on its signature or
   on a public method of the class, or the word "tensor" in its docstring), the
   docstring states shapes: a shape such as ``[K, *batch]``, ``[N]`` or ``(N, D)``,
   or the word "shape".

These are textual checks: they catch a missing reference or a docstring silent about
shapes, not a wrong one; the citations themselves are reviewed against
``shared/REFERENCES.md``.  Constants (``KHAT_GOOD``, ``OPS``) and modules are
containers, not names with behaviour; modules listed in an ``__all__`` are walked.
"""

from __future__ import annotations

import importlib
import inspect
import re
import types
from pathlib import Path

import pytest

# Packages whose public names are audited; each is read through ``__all__`` or, for the
# lazy ``vitorch.models``, through its ``_EXPORTS`` table and subpackages.
PACKAGES = [
    "vitorch",
    "vitorch.testing",
    "vitorch.model",
    "vitorch.families",
    "vitorch.flows",
    "vitorch.objectives",
    "vitorch.estimators",
    "vitorch.diagnostics",
    "vitorch.mmd",
    "vitorch.models",
    "vitorch.models.vae",
    "vitorch.models.last_layer",
    "vitorch.models.gp",
    "vitorch.models.ssm",
    "vitorch.kernels",
    "vitorch.data",
    "vitorch.training",
    "vitorch.quadrature",
    "vitorch.unscented",
    "vitorch.silent",
    "vitorch.families.wasserstein",
    "vitorch.particles",
    "vitorch.gvi",
    "vitorch.optim",
    "vitorch.sbi",
]

_YEAR = r"(?:19|20)\d{2}[a-z]?"
# An inline citation: a capitalised name, then within a short span (no sentence end) a
# year in parentheses or after a comma / "et al." -- "Titsias (2009)", "Hensman et al.,
# 2013", "(Krishnan et al., 2017)", "Särkkä & García-Fernández (2021)".
_INLINE = re.compile(rf"\b[A-Z][^\W\d_]+(?:[^.()\n]|\bal\.|\n(?!\s*\n)){{0,80}}?(?:\(|,\s*|al\.\s+){_YEAR}\b")
_ARXIV = re.compile(r"arXiv[:\s]*\d{4}\.\d{4,5}", re.I)
_DOI = re.compile(r"\b(?:doi[:\s]*)?10\.\d{4,9}/\S+", re.I)
_URL = re.compile(r"https?://\S+")
_SECTION = re.compile(r"^\s*References:\s*$", re.M)

# A shape: brackets around dimension names (``[K, *batch]``, ``[N]``, ``[]``, ``[..., D]``),
# or parentheses around at least two of them (``(N, D)``, ``(N,)``), or the word "shape".
_DIM = r"(?:\*?[A-Za-z_][\w']*(?:\s*[-+*/]\s*\w+)?|\d+|\.\.\.|\*)"
_SHAPE = re.compile(
    rf"\[\s*(?:{_DIM}(?:\s*[,x×]\s*{_DIM})*\s*,?)?\s*\]"
    rf"|\(\s*{_DIM}\s*,(?:\s*{_DIM}\s*,?)*\s*\)"
    r"|\bshapes?\b",
    re.I,
)


def _public(module_name: str) -> dict[str, object]:
    """``name -> object`` for the public names of one package (lazy exports resolved)."""
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    if names is None:  # vitorch.models: a lazy table of re-exports plus zoo subpackages
        names = list(getattr(module, "_EXPORTS", {}))
    return {name: getattr(module, name) for name in names}


def _collect() -> dict[str, object]:
    """Every public class, function and exported callable instance, keyed by its defining path."""
    found: dict[str, object] = {}
    seen: set[int] = set()
    queue = list(PACKAGES)
    while queue:
        package = queue.pop(0)
        for name, obj in _public(package).items():
            if isinstance(obj, types.ModuleType):
                if obj.__name__.startswith("vitorch.") and obj.__name__ not in PACKAGES + queue:
                    queue.append(obj.__name__)  # e.g. vitorch.models.last_layer.metrics
                continue
            if id(obj) in seen:
                continue
            if inspect.isclass(obj) or inspect.isfunction(obj):
                key = f"{obj.__module__}.{obj.__qualname__}"
            elif callable(obj) and type(obj).__module__.startswith("vitorch"):
                key = f"{package}.{name}"  # an exported instance, e.g. vt.estimators.dreg
            else:
                continue  # a constant: no behaviour to document
            seen.add(id(obj))
            found[key] = obj
    return dict(sorted(found.items()))


PUBLIC = _collect()


def _own_doc(obj) -> str:
    """The docstring that belongs to ``obj`` itself ('' if it only inherits one)."""
    if inspect.isclass(obj):
        return obj.__dict__.get("__doc__") or ""
    if inspect.isfunction(obj):
        return obj.__doc__ or ""
    cls = type(obj)  # an exported instance documents itself through its own class
    return cls.__dict__.get("__doc__") or ""


def _full_doc(obj) -> str:
    """The own docstring plus, for a class, its own ``__init__`` docstring."""
    doc = _own_doc(obj)
    if inspect.isclass(obj) and "__init__" in obj.__dict__:
        doc += "\n" + (obj.__dict__["__init__"].__doc__ or "")
    return doc


def _cites(doc: str) -> bool:
    for match in _SECTION.finditer(doc):
        body = doc[match.end() :].split("\n\n")[0]  # the section runs to the next blank line
        if re.search(_YEAR, body) or _ARXIV.search(body) or _DOI.search(body) or _URL.search(body):
            return True
    return bool(_INLINE.search(doc) or _ARXIV.search(doc) or _DOI.search(doc))


def _annotations(fn) -> list[str]:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return []
    annotations = [p.annotation for p in sig.parameters.values()] + [sig.return_annotation]
    return [a if isinstance(a, str) else getattr(a, "__name__", repr(a)) for a in annotations]


# Public classes by their simple name, to follow a return annotation such as ``-> Objective``.
_CLASSES = {obj.__name__: obj for obj in PUBLIC.values() if inspect.isclass(obj)}


def _signature_mentions_tensor(fn, visiting: frozenset) -> bool:
    """A ``Tensor`` annotation, or one naming a public class whose own methods take or return tensors."""
    for text in _annotations(fn):
        if "Tensor" in text:
            return True
        for word in re.findall(r"[A-Za-z_]\w*", text):
            cls = _CLASSES.get(word)
            if cls is not None and cls not in visiting and _handles_tensors(cls, visiting | {cls}):
                return True
    return False


def _handles_tensors(obj, visiting: frozenset = frozenset()) -> bool:
    """Whether ``obj`` takes or returns tensors, directly or through the object it returns."""
    if inspect.isclass(obj) and issubclass(obj, BaseException):
        return False
    if re.search(r"\btensors?\b", _full_doc(obj), re.I):
        return True
    if inspect.isfunction(obj):
        return _signature_mentions_tensor(obj, visiting)
    classes = obj.__mro__ if inspect.isclass(obj) else type(obj).__mro__
    for cls in classes:
        if not cls.__module__.startswith("vitorch"):
            continue  # torch's own methods (nn.Module.forward etc.) are documented by torch
        for attr, member in cls.__dict__.items():
            if attr.startswith("_") and attr not in ("__init__", "__call__"):
                continue
            member = member.fget if isinstance(member, property) else member
            member = member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
            if inspect.isfunction(member) and _signature_mentions_tensor(member, visiting | {cls}):
                return True
    return False


def test_the_audit_sees_the_whole_api():
    # Guards the collector itself: a broken walk would make every other test vacuous.
    assert len(PUBLIC) > 150
    for key in ("vitorch.loss.loss", "vitorch.models.gp.svgp.SVGP", "vitorch.objectives.iwae"):
        assert key in PUBLIC, key


def test_the_checks_reject_what_they_should():
    assert not _cites("Evidence lower bound, default 2000 steps.")
    assert not _cites("References:\n    the usual ones\n")
    assert _cites("References:\n    Titsias, *Variational Learning of Inducing Variables* (2009).")
    assert _cites("the bound of Hensman et al. (2013)")
    assert _cites("see arXiv:1509.00519")
    assert not _SHAPE.search("Returns the bound (optional) for each batch element.")
    assert _SHAPE.search("log_w: ``[K, *batch]`` log-weights")
    assert _SHAPE.search("X: inputs (N, D)")


@pytest.mark.parametrize("key", list(PUBLIC))
def test_has_own_docstring(key):
    assert _own_doc(PUBLIC[key]).strip(), f"{key} has no docstring of its own"


@pytest.mark.parametrize("key", list(PUBLIC))
def test_cites_a_reference(key):
    assert _cites(_full_doc(PUBLIC[key])), f"{key}: no References: section or inline citation"


@pytest.mark.parametrize("key", [k for k, v in PUBLIC.items() if _handles_tensors(v)])
def test_states_shapes(key):
    assert _SHAPE.search(_full_doc(PUBLIC[key])), f"{key} takes or returns tensors but states no shapes"


def failures_by_file() -> dict[str, list[str]]:
    """``source file -> ["name: what is missing", ...]`` for every name that fails an audit test."""
    report: dict[str, list[str]] = {}
    for key, obj in PUBLIC.items():
        missing = []
        if not _own_doc(obj).strip():
            missing.append("own docstring")
        if not _cites(_full_doc(obj)):
            missing.append("reference")
        if _handles_tensors(obj) and not _SHAPE.search(_full_doc(obj)):
            missing.append("shapes")
        if missing:
            where = inspect.getmodule(obj if inspect.isclass(obj) or inspect.isfunction(obj) else type(obj))
            path = where.__file__.split("/src/", 1)[-1]
            report.setdefault(path, []).append(f"{key}: {', '.join(missing)}")
    return report


if __name__ == "__main__":  # `python tests/test_docstrings.py` prints the failures grouped by file
    for path, lines in sorted(failures_by_file().items()):
        print(f"\n### {path} ({len(lines)})")
        print("\n".join(f"- {line}" for line in lines))


def test_no_sphinx_roles_in_docstrings():
    # The API pages are Markdown (mkdocstrings): a Sphinx role such as :func:`x` would show raw.
    src = Path(importlib.import_module("vitorch").__file__).parent
    role = re.compile(r":(?:func|class|mod|meth|attr|data|obj|exc):`")
    found = [f"{p.relative_to(src)}" for p in src.rglob("*.py") if role.search(p.read_text())]
    assert not found, f"Sphinx roles in {found}; write `name` instead"
