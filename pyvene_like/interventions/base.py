"""The intervention contract.

An intervention is an ``nn.Module`` whose ``forward(base, source=None, subspaces=None)``
receives the *gathered* units of one site and returns their new values:

* ``base``   -- ``[batch, units, width]`` activations of the base run at the chosen units
  (``width`` is the hidden size, or ``head_dim`` for head units);
* ``source`` -- the same shape, from the source run, a given ``source_representation``,
  or (for :attr:`Intervention.source_from` ``"module_input"``) the module's own input;
* ``subspaces`` -- per-example lists of subspace ids (``[batch][k]``), or ``None``.

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

from ..errors import ConfigError, LocationError
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
        """``[batch, 1, width]`` boolean mask of the dims selected by ``subspaces``.

        Without ``subspace_partition`` the ids are raw dimensions; with one, id ``k``
        selects the dims ``partition[k][0]:partition[k][1]``. ``None`` selects all.
        """
        if subspaces is None:
            return None
        width = base.shape[-1]
        bsz = base.shape[0]
        if self.subspace_partition is None:
            rows = subspace_rows(subspaces, bsz, width, lambda bad: (
                f"subspaces: dimension {bad} is outside the site's width {width} (accepted: "
                f"0..{width - 1}, or set subspace_partition to address groups of dimensions)"))
            ids = torch.as_tensor(rows, dtype=torch.long, device=base.device)  # [B, K]
            mask = torch.zeros(bsz, width, dtype=torch.bool, device=base.device)
            mask.scatter_(1, ids, True)
        else:
            table = self._table(width, base.device)
            rows = subspace_rows(subspaces, bsz, table.shape[0], lambda bad: (
                f"subspaces: subspace id {bad} is past subspace_partition "
                f"{self.subspace_partition} (accepted ids: 0..{table.shape[0] - 1})"))
            ids = torch.as_tensor(rows, dtype=torch.long, device=base.device)  # [B, K]
            mask = table[ids].any(dim=1)  # [B, width]
        return mask.unsqueeze(1)

    def _table(self, width: int, device) -> torch.Tensor:
        table = self._partition_table
        if table is None or table.shape[1] != width or table.device != device:
            part = self.subspace_partition
            reach = max(end for _, end in part)
            if reach > width:
                raise LocationError(
                    f"subspace_partition {part} reaches dimension {reach} but the site's "
                    f"width is {width}"
                )
            table = torch.zeros(len(part), width, dtype=torch.bool, device=device)
            for i, (start, end) in enumerate(part):
                table[i, start:end] = True
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


def rectangular_subspaces(subspaces, bsz: int) -> list[list[int]]:
    """Normalise ``[k]`` or ``[batch][k]`` subspace ids into a padded ``[batch][k]`` list.

    Every id must be an int (Python or numpy, not a bool, not a float: ``1.0`` and ``True``
    are refused rather than truncated); ranges are checked by the caller, which knows them
    (:func:`subspace_rows`)."""
    if isinstance(subspaces, torch.Tensor):
        subspaces = subspaces.tolist()
    if is_int(subspaces):
        subspaces = [subspaces]
    if not isinstance(subspaces, (list, tuple)) or len(subspaces) == 0:
        raise LocationError(
            f"subspaces: expected a list of ids or a [batch][ids] list, got {subspaces!r}"
        )
    if not any(isinstance(s, (list, tuple, torch.Tensor)) for s in subspaces):
        return [_int_ids(subspaces, subspaces)] * bsz
    if len(subspaces) != bsz:
        raise LocationError(
            f"subspaces: got {len(subspaces)} per-example lists for a batch of {bsz}"
        )
    rows = []
    for s in subspaces:
        if isinstance(s, torch.Tensor):
            s = s.tolist()
        rows.append(_int_ids(s if isinstance(s, (list, tuple)) else [s], subspaces))
    if any(len(r) == 0 for r in rows):
        raise LocationError(
            "subspaces: an example selected no subspace; give at least one id per example, "
            "or pass subspaces=None to use every dimension"
        )
    width = max(len(r) for r in rows)
    # Repeating an id is harmless for a mask, so ragged rows are padded with their first id.
    return [r + [r[0]] * (width - len(r)) for r in rows]


def _int_ids(row, subspaces) -> list[int]:
    """The ids of one example as Python ints; anything else (a bool, a float, NaN, a nested
    list such as per-unit ids) is a LocationError naming it."""
    for v in row:
        if not is_int(v):
            raise LocationError(
                f"subspaces: ids must be ints (not bools, floats or deeper lists), given as [ids] "
                f"or [batch][ids]; got {v!r} in {subspaces!r}"
            )
    return [int(v) for v in row]


def subspace_rows(subspaces, bsz: int, count: int, out_of_range) -> list[list[int]]:
    """:func:`rectangular_subspaces`, with every id in ``0..count-1``: a negative id does not
    count from the end, and an id too large for an int64 is reported, not overflowed.
    ``out_of_range(bad_id)`` words the LocationError."""
    rows = rectangular_subspaces(subspaces, bsz)
    lo = min(min(r) for r in rows)
    hi = max(max(r) for r in rows)
    if lo < 0 or hi >= count:
        raise LocationError(out_of_range(hi if hi >= count else lo))
    return rows


def check_partition(partition, embed_dim):
    """``None``, or ``[[start, end), ...]`` non-overlapping int pairs within ``embed_dim``.

    The pairs may come in any order: subspace id ``k`` is the ``k``-th pair, so
    ``[[1, 3], [0, 1]]`` names dims 1-2 subspace 0 and dim 0 subspace 1 (as in pyvene)."""
    if partition is None:
        return None
    shape = (
        f"subspace_partition must be a non-empty list of [start, end) pairs of ints like "
        f"[[0, 64], [64, 128]], got {partition!r}"
    )
    if isinstance(partition, torch.Tensor):
        if partition.dtype.is_floating_point or partition.dtype.is_complex or partition.dtype == torch.bool:
            raise ConfigError(shape)
        partition = partition.tolist()
    if not isinstance(partition, (list, tuple)) or not partition:
        raise ConfigError(shape)
    part = []
    for pair in partition:
        if isinstance(pair, torch.Tensor):
            pair = pair.tolist()
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not all(is_int(v) for v in pair):
            raise ConfigError(shape)
        part.append([int(pair[0]), int(pair[1])])
    for start, end in part:
        if not 0 <= start < end:
            raise ConfigError(
                f"subspace_partition must be [start, end) pairs with 0 <= start < end, got {partition!r}"
            )
    ordered = sorted(part)
    for (_, end), (start, _) in zip(ordered, ordered[1:]):
        if start < end:
            raise ConfigError(
                f"subspace_partition must be non-overlapping [start, end) pairs (a dimension belongs "
                f"to one subspace), got {partition!r}"
            )
    reach = max(end for _, end in part)
    if embed_dim is not None and reach > embed_dim:
        raise ConfigError(
            f"subspace_partition {partition!r} reaches dimension {reach} but the site's width is "
            f"{embed_dim}"
        )
    return part
