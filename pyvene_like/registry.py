"""Name -> intervention class registry.

A new intervention type is one class decorated with :func:`register_intervention`.
The registry validates what it registers so that mistakes surface at import time,
not in the middle of a forward pass.
"""

from __future__ import annotations

import inspect

from .errors import ConfigError, accepted, did_you_mean

_REGISTRY: dict[str, type] = {}


def register_intervention(name: str, *aliases: str):
    """Class decorator: register an :class:`~pyvene_like.interventions.Intervention`."""

    def deco(cls):
        from .interventions.base import Intervention

        if not (inspect.isclass(cls) and issubclass(cls, Intervention)):
            raise TypeError(f"register_intervention({name!r}): {cls!r} is not an Intervention subclass")
        if not inspect.isfunction(getattr(cls, "forward", None)):
            raise TypeError(f"register_intervention({name!r}): {cls.__name__} defines no forward()")
        params = list(inspect.signature(cls.forward).parameters)
        if params[:2] != ["self", "base"]:
            raise TypeError(
                f"register_intervention({name!r}): {cls.__name__}.forward must take "
                f"(self, base, source=None, subspaces=None), got ({', '.join(params)})"
            )
        for key in (name, *aliases):
            if not isinstance(key, str) or not key:
                raise TypeError(f"register_intervention: name must be a non-empty string, got {key!r}")
            prior = _REGISTRY.get(key)
            if prior is not None and prior is not cls:
                raise ConfigError(
                    f"intervention name {key!r} is already registered to {prior.__qualname__}; "
                    f"choose another name for {cls.__qualname__}"
                )
            _REGISTRY[key] = cls
        cls.registry_name = name
        return cls

    return deco


def get_intervention_class(name: str):
    """Look up a registered class by name (case-sensitive, with did-you-mean)."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"intervention_type {name!r} is not a registered intervention. Accepted names: "
            f"{accepted(sorted(_REGISTRY))}.{did_you_mean(name, _REGISTRY)}"
        ) from None


def registered_interventions() -> dict[str, type]:
    """A copy of the registry, name -> class (aliases included)."""
    return dict(_REGISTRY)
