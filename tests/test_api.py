"""The curated public API: every package's ``__all__`` is derived from its imports, names what
it holds, and the same name means the same object wherever it is exported."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pytest

import pyvene_like as pv
from pyvene_like.exports import public_names

PACKAGES = ["pyvene_like", "pyvene_like.interventions", "pyvene_like.sae", "pyvene_like.codebook", "pyvene_like.models",
            "pyvene_like.analysis", "pyvene_like.training", "pyvene_like.compat"]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_names_resolve_and_star_import_works(name):
    module = importlib.import_module(name)
    assert module.__all__ == sorted(set(module.__all__))
    for n in module.__all__:
        assert hasattr(module, n), f"{name}.__all__ lists {n!r}, which it does not define"
    namespace: dict = {}
    exec(f"from {name} import *", namespace)
    assert set(module.__all__) <= set(namespace)


def test_a_name_means_one_object_across_packages():
    seen: dict = {}
    for name in PACKAGES:
        module = importlib.import_module(name)
        for n in module.__all__:
            obj = getattr(module, n)
            if isinstance(obj, ModuleType):
                continue  # pv.interventions and pv.models.interventions are two paths, as in pyvene
            if n in seen:
                assert seen[n][1] is obj, f"{n} is {seen[n][0]}.{n} and a different {name}.{n}"
            else:
                seen[n] = (name, obj)


def test_every_registered_builtin_is_exported_by_its_package():
    for cls in set(pv.registered_interventions().values()):
        if not cls.__module__.startswith("pyvene_like."):
            continue  # a user's (or a test's) own registration
        package = importlib.import_module(cls.__module__.rsplit(".", 1)[0])
        assert getattr(package, cls.__name__, None) is cls, f"{package.__name__} does not export {cls.__name__}"


def test_public_names_derives_from_imports_and_checks_extras():
    ns = {"A": type("A", (), {"__module__": "pkg.sub"}), "B": type("B", (), {"__module__": "other"}),
          "_hidden": 1, "CONST": (1, 2)}
    assert public_names(ns, "pkg", extra=("CONST",)) == ["A", "CONST"]
    with pytest.raises(AttributeError, match=r"extra names \['NOPE'\] are not defined"):
        public_names(ns, "pkg", extra=("NOPE",))


def test_the_package_is_typed():
    assert (Path(pv.__file__).parent / "py.typed").is_file()
