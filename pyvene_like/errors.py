"""Exception and warning hierarchy.

Every user mistake is reported with a library error that names the field, the bad
value and what is accepted. All errors derive from :class:`PyveneLikeError`, and the
specific ones also derive from the builtin a user would naturally catch
(``ValueError``, ``IndexError``, ``TypeError``), so existing ``except`` clauses work.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PyveneLikeError(Exception):
    """Base class of every error raised by pyvene_like."""


class ConfigError(PyveneLikeError, ValueError):
    """A representation or intervention config is invalid."""


class SiteError(ConfigError):
    """A (layer, component, unit) site cannot be resolved on this model."""


class LocationError(PyveneLikeError, IndexError):
    """unit_locations / subspaces are malformed or out of range."""


class ShapeError(PyveneLikeError, ValueError):
    """A tensor (input, source representation, batch) has the wrong shape or dtype."""


class LoadError(PyveneLikeError, OSError):
    """A saved intervention cannot be read."""


class TrainingError(PyveneLikeError, FloatingPointError):
    """Training cannot go on: gradients became inf or NaN (a step would ruin the parameters)."""


class PyveneLikeWarning(UserWarning):
    """Base class of the library's warnings."""


def did_you_mean(value: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest choices, or ``""``."""
    close = difflib.get_close_matches(str(value), list(choices), n=n, cutoff=0.5)
    if not close:
        return ""
    if len(close) == 1:
        return f" Did you mean {close[0]!r}?"
    return " Did you mean one of " + ", ".join(repr(c) for c in close) + "?"


def accepted(choices: Iterable[str]) -> str:
    return ", ".join(repr(c) for c in choices)
