"""The intervention contract.

An intervention is an ``nn.Module`` whose ``forward(base, source=None, subspaces=None)``
receives the *gathered* units of one site and returns their new values:

* ``base``   -- ``[batch, units, width]`` activations of the base run at the chosen units
  (``width`` is the hidden size, or ``head_dim`` for head units);
* ``source`` -- the same shape, from the source run, a given ``source_representation``,
  or (for :attr:`Intervention.source_from` ``"module_input"``) the module's own input;
* ``subspaces`` -- per-example lists of subspace ids (``[batch][k]``), or ``None``. Called
  directly, an intervention also takes one list for all, one per unit (``[units][k]``, pyvene's
  form) or one per example and unit (:func:`subspace_layout`).

Capabilities are class attributes so the engine can plan without calling anything.

Settings: :meth:`Intervention.get_config` returns the JSON constructor arguments that, with the
state dict, rebuild an intervention (``type(iv).from_config(iv.get_config())`` then
``load_state_dict``); a subclass with constructor arguments of its own extends it. Saving
(:mod:`pyvene_like.serialization`) relies on nothing else.

Examples: :meth:`Intervention.example_kwargs` and :meth:`Intervention.null_kwargs` declare
the ``RepresentationConfig`` arguments of a working example and of a null edit, so the
registry-driven tests (``tests/test_registry_driven.py``) cover a new registered type without
being edited.

An intervention that works on a module of its own at its site (a codebook) may define
``bind_site(model, site, rep) -> Site``: called once when the IntervenableModel is built, it
returns the site to hook instead (see :class:`~pyvene_like.interventions.codebook.CodebookIntervention`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ..errors import ConfigError, LocationError, ShapeError
from ..types import Partition, Subspaces
from ..validation import check_bool, check_optional_positive_int, is_int

if TYPE_CHECKING:
    from ..sites import Site


class Intervention(nn.Module):
    """Base class; subclasses register themselves with ``@register_intervention``."""

    registry_name: ClassVar[str | None] = None
    #: "source" (a source run or source_representations), "module_input" or None.
    source_from: ClassVar[str | None] = "source"
    #: False for interventions that only read (Collect): the base output is untouched.
    modifies_output: ClassVar[bool] = True
    #: True when the intervention has parameters meant to be optimised.
    trainable: ClassVar[bool] = False
    #: True when forward() honours ``subspaces``.
    supports_subspaces: ClassVar[bool] = True
    #: True when forward() itself refuses units whose width is not ``embed_dim`` (a ShapeError
    #: at call time); otherwise :meth:`bind_site` compares ``embed_dim`` with the site at build.
    checks_width: ClassVar[bool] = False
    #: Set by IntervenableModel on the interventions it runs: their units are the site's whole
    #: width, so ``embed_dim`` never selects the first features (:meth:`prefix_mask`), as it does
    #: for an intervention called directly on wider units (pyvene's meaning).
    in_model: bool = False

    def __init__(self, embed_dim: int | None = None, subspace_partition: Partition = None, use_fast: bool = False):
        super().__init__()
        self.embed_dim = check_optional_positive_int(embed_dim, f"{type(self).__name__}: embed_dim")
        self.subspace_partition = check_partition(subspace_partition, embed_dim)
        self._partition_table: torch.Tensor | None = None
        # pyvene's flag for "every example selects the same subspaces"; one code path serves
        # both here, so it is accepted for ported code and changes nothing.
        self.use_fast = check_bool(use_fast, f"{type(self).__name__}: use_fast")

    @property
    def needs_source(self) -> bool:
        return self.source_from == "source"

    def forward(self, base: torch.Tensor, source: torch.Tensor | None = None,
                subspaces: Subspaces = None) -> torch.Tensor | None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- settings (what serialization saves besides the state dict) ------------------------
    def get_config(self) -> dict[str, Any]:
        """The JSON constructor arguments that, with :meth:`state_dict`, rebuild this intervention.

        Values the state dict holds (parameters, buffers, torch's extra state) are state, not
        settings. Subclasses with constructor arguments of their own add them, with the values
        in use now (a setting changed after construction is saved as changed).
        """
        return {"embed_dim": self.embed_dim, "subspace_partition": self.subspace_partition}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Intervention:
        """Build an intervention from :meth:`get_config`'s dict (``cls(**config)`` by default)."""
        if not isinstance(config, dict):
            raise ConfigError(
                f"{cls.__name__}.from_config: expected a dict of constructor arguments "
                f"(get_config()), got {type(config).__name__}"
            )
        return cls(**config)

    def bind_site(self, model: nn.Module, site: Site, rep: Any) -> None:
        """Check, once at build time, that ``embed_dim`` (when given) is the site's width.

        A wrong ``embed_dim`` (``intervention_kwargs={"embed_dim": 7}`` on a site of width 64) is
        refused here rather than ignored by types that do not use it. Returns ``None``: the site
        stays as resolved. Subclasses that move to a site of their own override this.
        """
        units = getattr(rep, "unit", "pos")
        width = site.head_dim if units in ("h", "h.pos") else site.width
        if self.checks_width or self.embed_dim is None or width is None:
            return None
        if self.embed_dim != width:
            raise ConfigError(
                f"{type(self).__name__}: embed_dim={self.embed_dim} does not match the width of "
                f"the site {getattr(site, 'description', site)} ({width}); leave embed_dim unset "
                f"(the site's width is used) or give {width}"
            )
        return None

    # -- declared examples (registry-driven tests) ------------------------------------------
    @classmethod
    def example_kwargs(cls, embed_dim: int) -> dict[str, Any]:
        """``RepresentationConfig`` keyword arguments (besides ``intervention_type``) that build a
        working example of this type at a site of width ``embed_dim``; ``{}`` by default."""
        return {}

    @classmethod
    def null_kwargs(cls, embed_dim: int) -> dict[str, Any] | None:
        """``RepresentationConfig`` keyword arguments under which this type is a null edit: the
        model's outputs stay bit-identical (given a source equal to the base when the type takes
        one). ``None`` (the default): the type cannot express a null edit."""
        return None

    @classmethod
    def example_model(cls, model: nn.Module, layer: int, component: str) -> nn.Module:
        """The model an example of this type runs on (a copy prepared for it, when the type
        needs something of the model, such as a codebook); ``model`` itself by default."""
        return model

    # -- helpers for subclasses -------------------------------------------------------
    def subspace_mask(self, subspaces: Subspaces, base: torch.Tensor) -> torch.Tensor | None:
        """Boolean mask of the dims selected by ``subspaces``, broadcastable to ``base``.

        Without ``subspace_partition`` the ids are raw dimensions; with one, id ``k`` selects the
        dims of the ``k``-th subspace. The forms :func:`subspace_layout` accepts: one id list for
        everything, one per example, one per unit (an intervention called directly on
        ``[batch, units, width]``), or one per example and unit. ``None`` selects all.
        """
        if subspaces is None:
            return None
        width = base.shape[-1]
        rows, cover = self._checked_rows(subspaces, base)
        ids = torch.as_tensor(padded(rows), dtype=torch.long, device=base.device)  # [N, K]
        if self.subspace_partition is None:
            mask = torch.zeros(len(rows), width, dtype=torch.bool, device=base.device)
            mask.scatter_(1, ids, True)
        else:
            mask = self._table(width, base.device)[ids].any(dim=1)  # [N, width]
        return mask.view(*cover, width)

    def subspace_dims(self, subspaces: Subspaces, base: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """The selected dims in the order the ids give them (a subspace's dims in its own order),
        as a ``[N, k]`` index tensor and the cover :func:`subspace_layout` returns; every row must
        select the same number of dims (the result is a tensor)."""
        width = base.shape[-1]
        rows, cover = self._checked_rows(subspaces, base)
        groups = None if self.subspace_partition is None else partition_groups(self.subspace_partition)
        dims = [list(r) if groups is None else [d for i in r for d in groups[i]] for r in rows]
        if any(len(d) != len(dims[0]) for d in dims):
            raise LocationError(
                f"subspaces: the rows select different numbers of dims ({sorted({len(d) for d in dims})}), "
                f"so their values do not stack into one tensor; give every row as many dims"
            )
        if groups is not None:
            self._table(width, base.device)  # the partition fits the width (or a LocationError)
        return torch.as_tensor(dims, dtype=torch.long, device=base.device), cover

    def _checked_rows(self, subspaces: Subspaces, base: torch.Tensor) -> tuple[list[list[int]], tuple[int, ...]]:
        """:func:`subspace_layout`, with every id a dimension of the units or a subspace of the
        partition."""
        width = base.shape[-1]
        rows, cover = subspace_layout(subspaces, base, self.use_fast)
        if self.subspace_partition is None:
            check_id_range(rows, width, lambda bad: (
                f"subspaces: dimension {bad} is outside the site's width {width} (accepted: "
                f"0..{width - 1}, or set subspace_partition to address groups of dimensions)"))
        else:
            count = len(self.subspace_partition)
            check_id_range(rows, count, lambda bad: (
                f"subspaces: subspace id {bad} is past subspace_partition "
                f"{self.subspace_partition} (accepted ids: 0..{count - 1})"))
        return rows, cover

    def swap_mask(self, subspaces: Subspaces, base: torch.Tensor) -> torch.Tensor | None:
        """The dims an interchange or arithmetic edit touches: the ``subspaces``, else (for units
        wider than ``embed_dim``) the first ``embed_dim`` features, else all (``None``)."""
        if subspaces is None:
            return self.prefix_mask(base)
        return self.subspace_mask(subspaces, base)

    def prefix_width(self, base: torch.Tensor) -> int | None:
        """pyvene's meaning of ``embed_dim`` for an intervention called directly on wider units:
        only the first ``embed_dim`` features take part (returned). ``None`` when the units are
        ``embed_dim`` wide, and always inside an IntervenableModel (:attr:`in_model`): there the
        units are the site's whole width."""
        width = base.shape[-1]
        if self.embed_dim is None or width == self.embed_dim or self.in_model:
            return None
        if width < self.embed_dim:
            raise ShapeError(
                f"{type(self).__name__}: units of width {width} are narrower than embed_dim="
                f"{self.embed_dim}; give units at least embed_dim wide (the first embed_dim "
                f"features take part)"
            )
        return self.embed_dim

    def prefix_mask(self, base: torch.Tensor) -> torch.Tensor | None:
        """:meth:`prefix_width` as a ``[width]`` boolean mask (``None``: every feature)."""
        n = self.prefix_width(base)
        if n is None:
            return None
        mask = torch.zeros(base.shape[-1], dtype=torch.bool, device=base.device)
        mask[:n] = True
        return mask

    def _table(self, width: int, device) -> torch.Tensor:
        table = self._partition_table
        if table is None or table.shape[1] != width or table.device != device:
            part = self.subspace_partition
            groups = partition_groups(part)
            reach = max(max(g) for g in groups) + 1
            if reach > width:
                raise LocationError(
                    f"subspace_partition {part} reaches dimension {reach} but the site's "
                    f"width is {width}"
                )
            table = torch.zeros(len(groups), width, dtype=torch.bool, device=device)
            for i, dims in enumerate(groups):
                table[i, dims] = True
            self._partition_table = table
        return table

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}" if self.embed_dim is not None else ""


class ConstantSourceIntervention(Intervention):
    """Base class for interventions that take no source run (pyvene's name for them).

    ``forward`` receives ``source=None``; the engine runs no source input for it, and a call
    with the base alone (``unit_locations={"base": ...}``) is enough. Zero, Collect and Noise
    are of this kind.
    """

    source_from = None

    def forward(self, base: torch.Tensor, source: torch.Tensor | None = None,
                subspaces: Subspaces = None) -> torch.Tensor | None:  # pragma: no cover - abstract
        raise NotImplementedError


def _id_rows(entries, subspaces) -> list[list[int]]:
    """Each entry (a list, tuple or 1-d tensor of ids, or one id) as a list of Python ints."""
    rows = []
    for s in entries:
        if isinstance(s, torch.Tensor):
            s = s.tolist()
        rows.append(_int_ids(s if isinstance(s, (list, tuple)) else [s], subspaces))
    if any(len(r) == 0 for r in rows):
        raise LocationError(
            "subspaces: an example selected no subspace; give at least one id per example, "
            "or pass subspaces=None to use every dimension"
        )
    return rows


def _nested(v) -> bool:
    return isinstance(v, (list, tuple)) or (isinstance(v, torch.Tensor) and v.dim() > 0)


def padded(rows: list[list[int]]) -> list[list[int]]:
    """Ragged rows padded with their own first id (repeating an id is harmless for a mask)."""
    width = max(len(r) for r in rows)
    return [r + [r[0]] * (width - len(r)) for r in rows]


def check_id_range(rows: list[list[int]], count: int, out_of_range) -> None:
    """Every id in ``0..count-1``: a negative id does not count from the end, and an id too large
    for an int64 is reported, not overflowed. ``out_of_range(bad_id)`` words the LocationError."""
    lo = min(min(r) for r in rows)
    hi = max(max(r) for r in rows)
    if lo < 0 or hi >= count:
        raise LocationError(out_of_range(hi if hi >= count else lo))


def _id_list(subspaces) -> list | tuple:
    """``subspaces`` as a non-empty list (a tensor as nested lists, one id as ``[id]``)."""
    if isinstance(subspaces, torch.Tensor):
        subspaces = subspaces.tolist()
    if is_int(subspaces):
        subspaces = [subspaces]
    if not isinstance(subspaces, (list, tuple)) or len(subspaces) == 0:
        raise LocationError(
            f"subspaces: expected a list of ids or a [batch][ids] list, got {subspaces!r}"
        )
    return subspaces


def subspace_layout(subspaces, base: torch.Tensor, use_fast: bool = False) -> tuple[list[list[int]], tuple[int, ...]]:
    """``subspaces`` for units ``base`` (``[batch, units, width]`` or ``[batch, width]``) as rows of
    int ids and the leading shape the rows cover, which a ``[N, width]`` mask takes by ``view``:

    * one id or ``[ids]``: the same for every example and unit (cover ``(1, 1)``);
    * ``[batch][ids]``: one list per example (cover ``(batch, 1)``), the engine's form;
    * ``[units][ids]`` when there are not ``batch`` lists but ``units`` of them: one list per unit
      (cover ``(1, units)``), as pyvene applies them when an intervention is called directly;
      with as many examples as units, lists are per example;
    * ``[batch][units][ids]``: per example and unit (cover ``(batch, units)``).

    ``use_fast`` (pyvene's promise that every row is the same): only the first list is read.
    Ragged rows stay ragged (:func:`padded` pads them for a mask).
    """
    bsz = base.shape[0]
    units = base.shape[1] if base.dim() == 3 else None
    one = (1, 1) if units is not None else (1,)
    subspaces = _id_list(subspaces)
    if not any(_nested(s) for s in subspaces):
        return [_int_ids(subspaces, subspaces)], one
    if use_fast:
        return _id_rows(subspaces[:1], subspaces), one
    n = len(subspaces)
    if units is not None and all(_nested(s) and len(s) > 0 and all(_nested(u) for u in s) for s in subspaces):
        if n != bsz or any(len(s) != units for s in subspaces):
            raise LocationError(
                f"subspaces: [batch][units][ids] lists must be {bsz} lists of {units} id lists "
                f"for units of shape {tuple(base.shape)}, got {n} lists of "
                f"{sorted({len(s) for s in subspaces})}"
            )
        return _id_rows([u for s in subspaces for u in s], subspaces), (bsz, units)
    if n == bsz:
        return _id_rows(subspaces, subspaces), ((bsz, 1) if units is not None else (bsz,))
    if units is not None and n == units:
        return _id_rows(subspaces, subspaces), (1, units)
    per_unit = f" or {units} per-unit lists" if units is not None else ""
    raise LocationError(
        f"subspaces: got {n} per-example lists for a batch of {bsz}{per_unit} (accepted: [ids] "
        f"for all, [batch][ids] per example{', [units][ids] per unit' if units is not None else ''})"
    )


def rectangular_subspaces(subspaces, bsz: int) -> list[list[int]]:
    """Normalise ``[k]`` or ``[batch][k]`` subspace ids into a padded ``[batch][k]`` list.

    Every id must be an int (Python or numpy, not a bool, not a float: ``1.0`` and ``True``
    are refused rather than truncated); ranges are checked by the caller, which knows them
    (:func:`subspace_rows`)."""
    subspaces = _id_list(subspaces)
    if not any(isinstance(s, (list, tuple, torch.Tensor)) for s in subspaces):
        return [_int_ids(subspaces, subspaces)] * bsz
    if len(subspaces) != bsz:
        raise LocationError(
            f"subspaces: got {len(subspaces)} per-example lists for a batch of {bsz}"
        )
    return padded(_id_rows(subspaces, subspaces))


def _int_ids(row, subspaces) -> list[int]:
    """The ids of one example as Python ints; anything else (a bool, a float, NaN, a nested
    list such as per-unit ids) is a LocationError naming it."""
    for v in row:
        if not is_int(v):
            raise LocationError(
                f"subspaces: ids must be ints (not bools, floats or deeper lists), given as [ids], "
                f"[batch][ids], [units][ids] or [batch][units][ids]; got {v!r} in {subspaces!r}"
            )
    return [int(v) for v in row]


def subspace_rows(subspaces, bsz: int, count: int, out_of_range) -> list[list[int]]:
    """:func:`rectangular_subspaces`, with every id in ``0..count-1`` (:func:`check_id_range`)."""
    rows = rectangular_subspaces(subspaces, bsz)
    check_id_range(rows, count, out_of_range)
    return rows


def partition_groups(partition) -> list[list[int]]:
    """The dims of each subspace of a checked partition: a two-int entry is the range
    ``[start, end)``, any other entry lists its dims."""
    return [list(range(g[0], g[1])) if len(g) == 2 else list(g) for g in partition]


def check_partition(partition, embed_dim):
    """``None``, or a non-empty list of subspaces that share no dimension, each a
    ``[start, end)`` pair of ints (``[0, 64]``) or a list of dims (``[0, 1, 2]``, ``[5]``).

    As in pyvene, an entry of exactly two ints is a range: ``[3, 4]`` is dim 3 alone. Entries
    may come in any order: subspace id ``k`` is the ``k``-th entry, so ``[[1, 3], [0, 1]]`` names
    dims 1-2 subspace 0 and dim 0 subspace 1."""
    if partition is None:
        return None
    shape = (
        f"subspace_partition must be a non-empty list of subspaces, each a [start, end) pair of "
        f"ints like [0, 64] or a list of dims like [0, 1, 2] (two ints are a range), got {partition!r}"
    )
    if isinstance(partition, torch.Tensor):
        if partition.dtype.is_floating_point or partition.dtype.is_complex or partition.dtype == torch.bool:
            raise ConfigError(shape)
        partition = partition.tolist()
    if not isinstance(partition, (list, tuple)) or not partition:
        raise ConfigError(shape)
    part = []
    for entry in partition:
        if isinstance(entry, torch.Tensor):
            entry = entry.tolist()
        if not isinstance(entry, (list, tuple)) or not entry or not all(is_int(v) for v in entry):
            raise ConfigError(shape)
        part.append([int(v) for v in entry])
    for entry in part:
        if len(entry) == 2 and not 0 <= entry[0] < entry[1]:
            raise ConfigError(
                f"subspace_partition: a two-int entry is a [start, end) range and needs "
                f"0 <= start < end, got {entry} in {partition!r}"
            )
        if len(entry) != 2 and (min(entry) < 0 or len(set(entry)) != len(entry)):
            raise ConfigError(
                f"subspace_partition: a list of dims needs distinct dims >= 0, got {entry} in {partition!r}"
            )
    dims = [d for g in partition_groups(part) for d in g]
    if len(set(dims)) != len(dims):
        raise ConfigError(
            f"subspace_partition must be non-overlapping subspaces (a dimension belongs to one "
            f"subspace), got {partition!r}"
        )
    reach = max(dims) + 1
    if embed_dim is not None and reach > embed_dim:
        raise ConfigError(
            f"subspace_partition {partition!r} reaches dimension {reach} but the site's width is "
            f"{embed_dim}"
        )
    return part
