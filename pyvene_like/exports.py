"""How a package states its public names once.

Each ``__init__`` imports what it offers (``from .x import A``) and ends with
``__all__ = public_names(globals(), __name__)``: the explicit imports are the one list, and
``__all__`` (what ``from package import *`` and documentation tools read) is derived from
them, so no name is listed twice. Names whose objects come from outside the package (``torch``,
a registry imported from a lower layer) and plain submodules stay out unless named in
``extra``.
"""

from __future__ import annotations

from types import ModuleType


def public_names(namespace: dict, package: str, extra: tuple[str, ...] = ()) -> list[str]:
    """The public names of ``namespace`` (a package's ``globals()``) defined inside ``package``,
    plus ``extra`` (constants such as tuples, which carry no ``__module__``; chosen submodules)."""
    names = []
    for name, value in namespace.items():
        if name.startswith("_") or isinstance(value, ModuleType) or value is public_names:
            continue
        origin = getattr(value, "__module__", None)
        if isinstance(origin, str) and (origin == package or origin.startswith(package + ".")):
            names.append(name)
    missing = [n for n in extra if n not in namespace]
    if missing:
        raise AttributeError(f"public_names({package!r}): extra names {missing} are not defined there")
    return sorted(set(names) | set(extra))
