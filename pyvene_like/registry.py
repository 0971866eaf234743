"""A small generic registry: names -> objects, with aliases, a check at registration and lookups
that say what is accepted.

It imports nothing above :mod:`pyvene_like.errors`. What a registered object must satisfy is
supplied by the package that owns the objects, through the ``check`` hook:

* :data:`INTERVENTIONS` -- ``intervention_type`` names -> :class:`~pyvene_like.interventions.Intervention`
  classes. A new intervention type is one class decorated with :func:`register_intervention`;
  :mod:`pyvene_like.interventions` installs the check (an ``Intervention`` subclass with a
  ``forward(self, base, ...)``), which also runs over whatever registered before it.
* ``pyvene_like.sae.formats.SAE_FORMATS`` -- SAE file formats, each a detector and a loader
  registered with one ``@register_sae_format(...)`` decorated function.

Mistakes surface at import time, not in the middle of a forward pass: a name taken by another
object, an empty name, or an object the check refuses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import ConfigError, accepted, did_you_mean

T = TypeVar("T")
_C = TypeVar("_C", bound=type)  # a class a decorator registers and hands back

#: The default lookup error; ``{field}``, ``{value}``, ``{kind}``, ``{accepted}`` and ``{hint}``
#: (a did-you-mean sentence or "") are filled in.
UNKNOWN = "{field} {value!r} is not a registered {kind}. Accepted names: {accepted}.{hint}"


def _describe(obj) -> str:
    return getattr(obj, "__qualname__", None) or str(obj)


class Registry(Generic[T]):
    """Names (and aliases) -> objects.

    * ``kind`` -- what the objects are, for messages ("intervention", "SAE format");
    * ``field`` -- the argument users spell the name in, for lookup errors ("intervention_type");
    * ``check(name, obj)`` -- called at registration (and, for a check installed later with
      :meth:`set_check`, over the objects already registered); raises to refuse ``obj``;
    * ``sort_names`` -- list accepted names sorted (else in registration order);
    * ``unknown`` -- the lookup error's text, see :data:`UNKNOWN`.
    """

    def __init__(self, kind: str, field: str, *, check: Callable[[str, T], None] | None = None,
                 sort_names: bool = True, unknown: str = UNKNOWN):
        self.kind = kind
        self.field = field
        self.sort_names = sort_names
        self.unknown = unknown
        self._check = check
        self._items: dict[str, T] = {}
        self._primary: dict[str, str] = {}  # name or alias -> the name it was registered under

    # -- registering ---------------------------------------------------------------------------
    def add(self, name: str, obj: T, *aliases: str) -> T:
        """Register ``obj`` under ``name`` (and ``aliases``); returns ``obj``."""
        if self._check is not None:
            self._check(name, obj)
        keys = (name, *aliases)
        for key in keys:
            if not isinstance(key, str) or not key:
                raise TypeError(f"{self.kind} name must be a non-empty string, got {key!r}")
            prior = self._items.get(key)
            if prior is not None and prior is not obj:
                raise ConfigError(
                    f"{self.kind} name {key!r} is already registered to {_describe(prior)}; "
                    f"choose another name for {_describe(obj)}"
                )
        for key in keys:
            self._items[key] = obj
            self._primary[key] = name
        return obj

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""

        def deco(obj: T) -> T:
            return self.add(name, obj, *aliases)

        return deco

    def remove(self, name: str) -> T:
        """Unregister ``name`` and its aliases (tests, notebooks re-running a cell); returns the object."""
        primary = self.primary_name(name)
        obj = self._items[primary]
        for key in [k for k, v in self._primary.items() if v == primary]:
            del self._items[key], self._primary[key]
        return obj

    def set_check(self, check: Callable[[str, T], None]) -> None:
        """Install the check; it runs over the objects registered so far, then at every ``add``."""
        for key, obj in self._items.items():
            if self._primary[key] == key:
                check(key, obj)
        self._check = check

    # -- looking up ----------------------------------------------------------------------------
    def get(self, name: str) -> T:
        """The object registered as ``name``; a :class:`~pyvene_like.errors.ConfigError` naming the
        field, the value and the accepted names (with did-you-mean) otherwise."""
        try:
            return self._items[name]
        except (KeyError, TypeError):  # TypeError: an unhashable value
            raise ConfigError(self.unknown.format(
                field=self.field, value=name, kind=self.kind, accepted=accepted(self.names()),
                hint=did_you_mean(name, self._items),
            )) from None

    def names(self) -> list[str]:
        """Every registered name and alias."""
        return sorted(self._items) if self.sort_names else list(self._items)

    def primary_name(self, name: str) -> str:
        """The name an alias stands for (a name stands for itself)."""
        self.get(name)
        return self._primary[name]

    def as_dict(self) -> dict[str, T]:
        """A copy: name or alias -> object."""
        return dict(self._items)

    def __contains__(self, name) -> bool:
        try:
            return name in self._items
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"


# -- interventions -----------------------------------------------------------------------------------
#: ``intervention_type`` name -> Intervention class. The check is installed by
#: :mod:`pyvene_like.interventions`, which owns the contract.
INTERVENTIONS: Registry[type] = Registry("intervention", "intervention_type")


def register_intervention(name: str, *aliases: str) -> Callable[[_C], _C]:
    """Class decorator: register an :class:`~pyvene_like.interventions.Intervention` under
    ``name`` (and ``aliases``) so configs can name it; sets ``cls.registry_name``."""

    def deco(cls: _C) -> _C:
        INTERVENTIONS.add(name, cls, *aliases)
        cls.registry_name = name
        return cls

    return deco


def get_intervention_class(name: str) -> type:
    """Look up a registered class by name (case-sensitive, with did-you-mean)."""
    return INTERVENTIONS.get(name)


def registered_interventions() -> dict[str, type]:
    """A copy of the registry, name -> class (aliases included)."""
    return INTERVENTIONS.as_dict()
