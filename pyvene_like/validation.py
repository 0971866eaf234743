"""Shared validators for values that come from users.

Every check raises a library error that names the field, shows the value and says what is
accepted. The rules are the same everywhere: a ``bool`` is not an int, a float is not an
index, NaN and infinities are not numbers a setting can take. Call these at the boundary
(constructors, public functions); code past the boundary trusts what they let through.

``field`` is the name the user wrote (``"max_new_tokens"``, ``"train_sae: d_sae"``); the
error class defaults to :class:`~pyvene_like.errors.ConfigError`.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from .errors import ConfigError, accepted, did_you_mean

if TYPE_CHECKING:
    import torch

_T = TypeVar("_T")


def is_int(value: object) -> bool:
    """True for Python and numpy integers, False for ``bool`` (a flag is not a count)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(value: object, field: str, *, minimum: int | None = None, maximum: int | None = None,
              error: type[Exception] = ConfigError) -> int:
    """``value`` as an ``int`` within ``[minimum, maximum]`` (bounds optional)."""
    if not is_int(value) or (minimum is not None and value < minimum) or (
            maximum is not None and value > maximum):
        raise error(f"{field} must be {_int_kind(minimum, maximum)}, got {value!r}")
    return int(value)


def check_positive_int(value: object, field: str, *, error: type[Exception] = ConfigError) -> int:
    """``value`` as an ``int`` >= 1."""
    return check_int(value, field, minimum=1, error=error)


def check_non_negative_int(value: object, field: str, *, error: type[Exception] = ConfigError) -> int:
    """``value`` as an ``int`` >= 0 (an index, a seed)."""
    return check_int(value, field, minimum=0, error=error)


def check_optional_positive_int(value: object, field: str, *, error: type[Exception] = ConfigError) -> int | None:
    """``None``, or ``value`` as an ``int`` >= 1."""
    if value is None:
        return None
    if not is_int(value) or value < 1:
        raise error(f"{field} must be a positive int or None, got {value!r}")
    return int(value)


def check_number(value: object, field: str, *, positive: bool = False, non_negative: bool = False,
                 error: type[Exception] = ConfigError) -> float:
    """A finite real number (int or float, not bool), optionally > 0 or >= 0."""
    kind = "a positive finite number" if positive else (
        "a non-negative finite number" if non_negative else "a finite number")
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and positive:
        ok = value > 0
    if ok and non_negative:
        ok = value >= 0
    if not ok:
        raise error(f"{field} must be {kind}, got {value!r}")
    return float(value)


def check_bool(value: object, field: str, *, error: type[Exception] = ConfigError) -> bool:
    """``True`` or ``False`` only (not 0/1, not strings)."""
    if not isinstance(value, bool):
        raise error(f"{field} must be True or False, got {value!r}")
    return value


def check_path(value: object, field: str, *, error: type[Exception] = ConfigError) -> Path:
    """A non-empty ``str`` or ``os.PathLike`` as a ``Path``. An empty string is refused: it
    means the current directory, where a save would overwrite whatever is there."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise error(f"{field} must be a folder path (a str or os.PathLike), got {value!r} ({type(value).__name__})")
    if not value.strip():
        raise error(f"{field} must be a folder path, got the empty string {value!r}; give a folder name")
    return Path(value)


def check_choice(value: _T, field: str, choices: Iterable, *, error: type[Exception] = ConfigError) -> _T:
    """One of ``choices`` (compared with ``==``; strings get a did-you-mean)."""
    choices = list(choices)
    try:
        ok = value in choices
    except TypeError:  # unhashable / incomparable values
        ok = False
    if not ok:
        names = [c for c in choices if isinstance(c, str)]
        raise error(
            f"{field} {value!r} is not accepted; accepted: {accepted(choices)}."
            f"{did_you_mean(value, names) if isinstance(value, str) else ''}"
        )
    return value


def check_int_list(value: object, field: str, *, minimum: int | None = None, maximum: int | None = None,
                   allow_empty: bool = False, error: type[Exception] = ConfigError) -> list[int]:
    """A list/tuple of ints (each within the bounds) -> ``list[int]``."""
    if not isinstance(value, (list, tuple)) or (not value and not allow_empty):
        raise error(f"{field} must be a {'' if allow_empty else 'non-empty '}list of "
                    f"{_int_kind(minimum, maximum, plural=True)}, got {value!r}")
    return [check_int(v, f"{field}[{i}]", minimum=minimum, maximum=maximum, error=error)
            for i, v in enumerate(value)]


def _int_kind(minimum, maximum, plural: bool = False) -> str:
    """'a positive int', 'a non-negative int', 'an int in 0..7', ... (or the plural)."""
    if maximum is None and minimum in (0, 1):
        word = "positive" if minimum == 1 else "non-negative"
        return f"{word} ints" if plural else f"a {word} int"
    noun = "ints" if plural else "an int"
    if minimum is not None and maximum is not None:
        return f"{noun} in {minimum}..{maximum}"
    if minimum is not None:
        return f"{noun} >= {minimum}"
    if maximum is not None:
        return f"{noun} <= {maximum}"
    return noun


def check_floating_tensor(value: object, field: str, *, error: type[Exception] = ConfigError) -> torch.Tensor:
    """``value`` as a floating-point tensor with finite entries (a steering vector, a source
    representation). Integer, bool or complex tensors are refused, not cast; a plain list of
    numbers is read as floats. Imports torch lazily."""
    import torch

    from_list = isinstance(value, (list, tuple))
    if not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise error(
                f"{field} must be a floating-point tensor (or a nested list of floats), got "
                f"{type(value).__name__}: {exc}"
            ) from None
    if from_list and value.dtype in (torch.int64, torch.int32):
        # A plain list of numbers such as [1, 0, 0] (JSON drops the '.0'): read as floats.
        value = value.to(torch.get_default_dtype())
    if value.dtype.is_floating_point and not bool(torch.isfinite(value).all()):
        raise error(f"{field} must hold finite numbers; it has NaN or infinite entries")
    if not value.dtype.is_floating_point:
        raise error(
            f"{field} must be a floating-point tensor, got dtype {value.dtype}; accepted: float16, "
            f"bfloat16, float32, float64 (cast it yourself, e.g. .float(), so nothing is lost silently)"
        )
    return value


def check_fits_dtype(value: float, field: str, dtype: object = "float32", *, headroom: float = 1.0,
                     error: type[Exception] = ConfigError) -> float:
    """A checked finite number that stays a number in the ``dtype`` it is used in: ``|value| *
    headroom`` within the dtype's range (``1e308`` is finite as a Python float but ``inf`` in
    float32), and a non-zero value not rounded to zero (a temperature of ``1e-50`` would divide
    by zero). ``headroom`` leaves room for what the value is multiplied by (a noise level times
    a normal draw). Imports torch lazily."""
    import torch

    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    info = torch.finfo(dtype)
    name = str(dtype).removeprefix("torch.")
    if abs(value) * headroom > info.max:
        limit = info.max / headroom
        raise error(
            f"{field} must fit in {name} (|value| <= {limit:.4g}"
            + (f", leaving room for {headroom:g}x" if headroom != 1.0 else "") + f"), got {value!r}"
        )
    if value != 0 and float(torch.tensor(value, dtype=dtype)) == 0.0:
        smallest = float(torch.nextafter(torch.zeros((), dtype=dtype), torch.ones((), dtype=dtype)))
        raise error(f"{field} rounds to 0 in {name} (its smallest positive value is {smallest:.4g}), got {value!r}")
    return value


def check_int_sequence(value: object, field: str, *, minimum: int | None = None, maximum: int | None = None,
                       unique: bool = False, error: type[Exception] = ConfigError) -> list[int]:
    """Like :func:`check_int_list`, also taking a ``range`` or a 1-d integer tensor / numpy
    array (read with ``tolist``; a float tensor is refused, not truncated); ``unique``: an
    entry given twice is refused (a grid axis or a head list with a repeat)."""
    if isinstance(value, range):
        value = list(value)
    elif hasattr(value, "tolist") and hasattr(value, "dtype") and getattr(value, "ndim", None) == 1:
        value = value.tolist()  # a float tensor gives floats, refused below
    out = check_int_list(value, field, minimum=minimum, maximum=maximum, error=error)
    if unique and len(set(out)) != len(out):
        twice = sorted({v for v in out if out.count(v) > 1})
        raise error(f"{field} must not repeat an entry, got {value!r} ({twice} given more than once)")
    return out


def check_token_ids(value: object, field: str, *, vocab_size: int | None = None,
                    error: type[Exception] | None = None) -> torch.Tensor:
    """A ``[batch, seq]`` integer tensor of token ids, each in ``0..vocab_size - 1`` when the
    vocabulary size is known (an id past it fails deep in the embedding otherwise). A float or
    bool tensor is refused, not cast."""
    import torch

    from .errors import ShapeError

    error = ShapeError if error is None else error
    if not isinstance(value, torch.Tensor) or value.dim() != 2 or value.dtype.is_floating_point or \
            value.dtype.is_complex or value.dtype == torch.bool:
        desc = (f"a {value.dim()}-d {value.dtype} tensor" if isinstance(value, torch.Tensor)
                else type(value).__name__)
        raise error(f"{field} must be a [batch, seq] integer tensor of token ids, got {desc}")
    if value.numel() and is_int(vocab_size):
        lo, hi = int(value.min()), int(value.max())
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            raise error(f"{field}: token id {bad} is outside the model's vocabulary (accepted: 0..{vocab_size - 1})")
    return value
