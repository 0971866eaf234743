"""Unit locations: normalisation into index tensors, and vectorised gather / scatter.

A site's activation is ``x: [batch, seq, features]`` (2-D activations ``[batch, features]``
are treated as ``seq == 1``). Units are positions (``pos``), heads (``h``) or heads at
positions (``h.pos``). Gathered units have shape ``[batch, units, width]`` where ``width``
is ``features`` (or ``head_dim`` for heads); head units are ordered head-major.
"""

from __future__ import annotations

import torch

from ..errors import LocationError, ShapeError
from ..validation import is_int

_ROWS: dict = {}


def batch_rows(bsz: int, device) -> torch.Tensor:
    """``arange(bsz)[:, None]``, cached per (size, device)."""
    key = (bsz, device)
    rows = _ROWS.get(key)
    if rows is None:
        rows = _ROWS[key] = torch.arange(bsz, device=device).unsqueeze(1)
    return rows


class Units:
    """Index tensors for one intervention on one side (source or base) of one call."""

    __slots__ = ("pos", "heads", "pos_lo", "pos_hi", "label", "bsz", "span")

    def __init__(self, pos=None, heads=None, pos_lo=0, pos_hi=-1, label="", bsz=None, span=None):
        self.bsz = bsz  # the call's batch size, to unflatten [batch * seq, features] activations
        # (start, length) when every example uses the same one position (start < 0 counts from
        # the end): a view of the activation, no index tensors.
        self.span = span
        self.pos = pos  # LongTensor [B, P] or None for every position
        self.heads = heads  # LongTensor [B, H] or None for every head
        self.pos_lo = pos_lo
        self.pos_hi = pos_hi
        self.label = label

    @property
    def everything(self) -> bool:
        return self.pos is None and self.heads is None and self.span is None

    def count(self, seq_len: int, n_heads: int | None) -> int:
        p = seq_len if self.pos is None else self.pos.shape[1]
        if n_heads is None:
            return p
        h = n_heads if self.heads is None else self.heads.shape[1]
        return p * h


def _fits_int64(v: int, label: str, what: str) -> int:
    """An index torch can hold; a larger one is out of range anyway (not an OverflowError)."""
    if not -(2**63) <= v < 2**63:
        where = "the sequence, or negative from the end" if what == "position" else "the model's heads"
        raise LocationError(f"{label}: {what} {v} is out of range (accepted: indices within {where})")
    return v


def _as_index_rows(value, bsz: int, label: str, what: str) -> torch.Tensor:
    """``[batch][n]`` ints (or an int) -> LongTensor ``[batch, n]``."""
    if isinstance(value, bool):
        raise LocationError(f"{label}: expected {what} indices, got {value!r}")
    if isinstance(value, int):
        return torch.full((bsz, 1), _fits_int64(value, label, what), dtype=torch.long)
    if isinstance(value, torch.Tensor):
        if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
            raise LocationError(f"{label}: {what} indices must be integers, got a {value.dtype} tensor")
        t = value.long()
        if t.dim() == 1:
            t = t.unsqueeze(1)
        if t.dim() != 2:
            raise LocationError(f"{label}: expected a [batch, n] tensor of {what} indices, got shape {tuple(value.shape)}")
    else:
        if not isinstance(value, (list, tuple)):
            raise LocationError(f"{label}: expected [batch][n] {what} indices, got {value!r}")
        rows = []
        for r in value:
            if isinstance(r, torch.Tensor) and r.dim() <= 1 and not (
                    r.dtype.is_floating_point or r.dtype.is_complex or r.dtype == torch.bool):
                r = r.tolist()
            if isinstance(r, (list, tuple)):
                rows.append(r)
            elif is_int(r):
                rows.append([r])
            else:
                # a row is an int or a list of ints; anything else (a float, NaN, a string, a
                # float tensor) is not an index, and torch.tensor would cast or fail raw on it
                raise LocationError(
                    f"{label}: {what} indices must be ints (a bool or a float is not an index), got "
                    f"{r!r} in {value!r}"
                )
        for row in rows:
            for v in row:
                if not is_int(v):
                    raise LocationError(
                        f"{label}: {what} indices must be ints (a bool or a float is not an index), got "
                        f"{v!r} in {value!r}"
                    )
                _fits_int64(v, label, what)
        try:
            t = torch.tensor(rows, dtype=torch.long)
        except (ValueError, TypeError):
            lens = sorted({len(r) for r in rows if hasattr(r, "__len__")})
            raise LocationError(
                f"{label}: expected [batch][n] integer {what} indices with the same n for every "
                f"example, got {value!r}" + (f" (lengths {lens})" if len(lens) > 1 else "")
            ) from None
        if t.dim() != 2:
            raise LocationError(f"{label}: expected [batch][n] {what} indices, got {value!r}")
    if t.shape[0] == 1 and bsz > 1:
        t = t.repeat(bsz, 1)  # one list for the whole batch (pyvene broadcasts it)
    if t.shape[0] != bsz:
        raise LocationError(
            f"{label}: has {t.shape[0]} examples but the batch has {bsz}; give one list of {what} "
            f"indices per example"
        )
    if t.shape[1] == 0:
        raise LocationError(f"{label}: an example has no {what} index; give at least one")
    return t


def make_units(loc, unit: str, bsz: int, n_heads: int | None, label: str) -> Units:
    """Normalise one intervention's location on one side into :class:`Units`."""
    if loc is None:
        return Units(label=label, bsz=bsz)
    heads_loc = pos_loc = None
    if unit in ("pos", "t"):  # "t": time steps, the calls of a module run once per step
        pos_loc = loc
    elif unit == "h":
        heads_loc = loc
    else:  # h.pos
        if not (isinstance(loc, (list, tuple)) and len(loc) == 2):
            raise LocationError(
                f"{label}: unit 'h.pos' takes a pair (heads [batch][n], positions [batch][n]) per "
                f"intervention, got {loc!r}"
            )
        heads_loc, pos_loc = loc
    pos = heads = span = None
    lo, hi = 0, -1
    if isinstance(pos_loc, int) and not isinstance(pos_loc, bool):
        lo = hi = pos_loc
        span = (pos_loc, 1)
    elif pos_loc is not None:
        pos = _as_index_rows(pos_loc, bsz, label, "position")
        lo, hi = int(pos.min()), int(pos.max())
    if heads_loc is not None:
        heads = _as_index_rows(heads_loc, bsz, label, "head")
        h_lo, h_hi = int(heads.min()), int(heads.max())
        if n_heads is not None and (h_hi >= n_heads or h_lo < 0):
            bad = h_hi if h_hi >= n_heads else h_lo
            raise LocationError(
                f"{label}: head {bad} is out of range; the site has {n_heads} heads (accepted: "
                f"0..{n_heads - 1})"
            )
    return Units(pos, heads, lo, hi, label, bsz, span)


def step_set(units: Units) -> frozenset:
    """The time steps of a unit ``"t"`` location: the same for every example."""
    if units.span is not None:
        if units.span[0] < 0:
            raise LocationError(f"{units.label}: unit 't' takes time steps counted from 0, got {units.span[0]}")
        return frozenset((units.span[0],))
    pos = units.pos
    if bool((pos != pos[:1]).any()) or units.pos_lo < 0:
        raise LocationError(
            f"{units.label}: unit 't' takes the same time steps (counted from 0) for every example, got "
            f"{pos.tolist()}"
        )
    return frozenset(pos[0].tolist())


def check_positions(units: Units, seq_len: int) -> None:
    if (units.pos is not None or units.span is not None) and (units.pos_hi >= seq_len or units.pos_lo < -seq_len):
        bad = units.pos_hi if units.pos_hi >= seq_len else units.pos_lo
        raise LocationError(
            f"{units.label}: position {bad} is out of range for a sequence of length {seq_len} "
            f"(accepted: 0..{seq_len - 1}, or negative from the end)"
        )


def _head_columns(units: Units, site, bsz: int, device) -> torch.Tensor:
    """Column indices ``[B, H*head_dim]`` of the selected heads in the site's last dim."""
    hd = site.head_dim
    heads = units.heads
    if heads is not None and heads.device != device:
        heads = units.heads = heads.to(device)
    if heads is None:
        heads = torch.arange(site.n_heads, device=device).expand(bsz, -1)
    cols = (heads.unsqueeze(-1) * hd + torch.arange(hd, device=device)).reshape(bsz, -1)
    base_cols = site.columns_on(device)
    if base_cols is not None:
        cols = base_cols[cols]
    return cols


def as_3d(x: torch.Tensor, bsz: int | None) -> torch.Tensor:
    """A ``[batch, seq, features]`` view of an activation.

    2-D activations are either ``[batch, features]`` (an MLP on vectors: seq == 1) or
    ``[batch * seq, features]`` (modules run on flattened tokens, e.g. OPT's fc1/fc2).
    """
    if x.dim() == 3:
        return x
    if x.dim() == 2:
        n = x.shape[0]
        if bsz is None or n == bsz:
            return x.unsqueeze(1)
        if n % bsz == 0:
            return x.view(bsz, n // bsz, x.shape[1])
    raise ShapeError(
        f"activation of shape {tuple(x.shape)} cannot be read as [batch={bsz}, seq, features]"
    )


def _window(xs: torch.Tensor, units: Units):
    """(positions view, per-example position index or None for every position in the view).

    Positions shared by the whole batch (an int location) are a basic slice: a view, no
    index tensors.
    """
    span = units.span
    if span is not None:
        start = span[0] if span[0] >= 0 else xs.shape[1] + span[0]
        return xs.narrow(1, start, span[1]), None
    pos = units.pos
    if pos is not None and pos.device != xs.device:
        # Index tensors follow the hooked module's device (sharded models: per module).
        pos = units.pos = pos.to(xs.device)
    return xs, pos


def gather(x: torch.Tensor, units: Units, site, heads: bool) -> torch.Tensor:
    """``[B, units, width]`` values of ``x`` at ``units`` (a view where no indexing is needed)."""
    xs = as_3d(x, units.bsz)
    check_positions(units, xs.shape[1])
    v, pos = _window(xs, units)
    bsz = v.shape[0]
    if not heads:
        cols = site.columns_on(v.device)
        sel = v if pos is None else v[batch_rows(bsz, v.device), pos]
        return sel if cols is None else sel.index_select(-1, cols)
    cols = _head_columns(units, site, bsz, v.device)  # [B, H*hd]
    if pos is None:
        sel = v.gather(-1, cols.unsqueeze(1).expand(bsz, v.shape[1], cols.shape[1]))
    else:
        sel = v[batch_rows(bsz, v.device).unsqueeze(-1), pos.unsqueeze(-1), cols.unsqueeze(1)]
    p = sel.shape[1]
    return sel.view(bsz, p, -1, site.head_dim).transpose(1, 2).reshape(bsz, -1, site.head_dim)


def scatter(x: torch.Tensor, units: Units, site, heads: bool, new: torch.Tensor, inplace: bool) -> torch.Tensor:
    """Write ``new: [B, units, width]`` into ``x`` at ``units``; returns the tensor to use.

    ``inplace=False`` (autograd is recording, or ``x`` may be aliased) writes into a copy.
    """
    xs = as_3d(x, units.bsz)
    if new.dtype != xs.dtype:
        new = new.to(xs.dtype)
    if not heads and units.everything and site.columns is None:
        if inplace:
            xs.copy_(new)
            return x
        return new.reshape(x.shape)
    if not inplace:
        xs = xs.clone()
    v, pos = _window(xs, units)
    bsz = v.shape[0]
    if not heads:
        cols = site.columns_on(v.device)
        if cols is None:
            if pos is None:
                v.copy_(new)
            else:
                v.index_put_((batch_rows(bsz, v.device), pos), new)
        else:
            if pos is None:
                pos = torch.arange(v.shape[1], device=v.device).expand(bsz, -1)
            v.index_put_((batch_rows(bsz, v.device).unsqueeze(-1), pos.unsqueeze(-1), cols.view(1, 1, -1)), new)
    else:
        cols = _head_columns(units, site, bsz, v.device)
        if pos is None:
            pos = torch.arange(v.shape[1], device=v.device).expand(bsz, -1)
        p = pos.shape[1]
        new = new.reshape(bsz, -1, p, site.head_dim).transpose(1, 2).reshape(bsz, p, -1)
        v.index_put_((batch_rows(bsz, v.device).unsqueeze(-1), pos.unsqueeze(-1), cols.unsqueeze(1)), new)
    if inplace:
        return x
    return xs.reshape(x.shape) if x.dim() != 3 else xs


def check_width(t: torch.Tensor, width: int, label: str) -> None:
    if t.shape[-1] != width:
        raise ShapeError(f"{label}: last dimension is {t.shape[-1]} but the site's units have width {width}")
