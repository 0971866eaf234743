"""Compile an IntervenableConfig against a model: resolve sites, build interventions.

:func:`compile_plan` gives a :class:`Plan`: the compiled slots (one per representation, in
config order) and their grouping by ``(module, io)``, the unit of hooking: every slot at the
same module and side shares one hook, and runs in config order inside it.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass, field

from torch import nn

from ..config import IntervenableConfig, RepresentationConfig
from ..errors import ConfigError, PyveneLikeWarning
from ..interventions.base import Intervention
from ..sites import HEAD_UNITS, ModelLayout, Site, resolve_site


@dataclass(eq=False)
class Slot:
    """One compiled intervention: its site, its module, and where its source comes from."""

    index: int
    key: str
    rep: RepresentationConfig
    site: Site
    intervention: Intervention
    group: int  # index into ``sources`` (pyvene's group order)
    heads: bool  # units split into heads
    units_cache: dict = field(default_factory=dict, repr=False)
    plain: bool = field(init=False, repr=False)  # whole-width units: no heads, no column subset
    steps: bool = field(init=False, repr=False)  # unit "t": locations are calls of the module

    def __post_init__(self):
        self.plain = not self.heads and self.site.columns is None
        self.steps = self.rep.unit == "t"

    @property
    def label(self) -> str:
        return f"intervention {self.index} ({type(self.intervention).__name__} at {self.key})"


def slot_key(i: int, rep: RepresentationConfig) -> str:
    return f"layer_{rep.layer}.{rep.component}.{rep.unit}#{i}"


def build_intervention(rep: RepresentationConfig, site: Site, index: int) -> Intervention:
    if rep.intervention is not None:
        return rep.intervention
    factory = rep.intervention_type
    offered = {
        "embed_dim": site.head_dim if rep.unit in HEAD_UNITS else site.width,
        "subspace_partition": rep.subspace_partition,
        "low_rank_dimension": rep.low_rank_dimension,
    }
    kwargs = dict(rep.intervention_kwargs)
    try:
        params = inspect.signature(factory).parameters
        takes_var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):  # pragma: no cover - builtins
        params, takes_var_kw = {}, True
    for name, value in offered.items():
        if name in kwargs:
            continue
        if name in params or takes_var_kw:
            if value is not None or name == "embed_dim":
                kwargs[name] = value
        elif value is not None and name != "embed_dim":
            # pyvene configs set these fields for every representation alike; the type does
            # not take this one, so it is left out (as pyvene does), but not silently.
            warnings.warn(
                f"representation {index}: {name}={value!r} is not used by "
                f"{getattr(factory, '__qualname__', factory)} and is ignored; remove it or pick an "
                f"intervention type that takes it",
                PyveneLikeWarning,
                stacklevel=2,
            )
    unknown = [k for k in rep.intervention_kwargs if k not in params and not takes_var_kw]
    if unknown:
        raise ConfigError(
            f"representation {index}: intervention_kwargs {unknown[0]!r} is not accepted by "
            f"{getattr(factory, '__qualname__', factory)}; accepted: "
            f"{', '.join(repr(p) for p in params if p != 'self')}"
        )
    intervention = factory(**kwargs)
    if not isinstance(intervention, Intervention):
        raise ConfigError(f"representation {index}: {factory!r} did not build an Intervention")
    return intervention


def compile_slots(config: IntervenableConfig, model: nn.Module) -> list[Slot]:
    """One :class:`Slot` per representation of ``config``, resolved on ``model``."""
    layout = ModelLayout(model)
    slots: list[Slot] = []
    groups: dict = {}
    linked: dict = {}
    for i, rep in enumerate(config.representations):
        site = resolve_site(layout, rep.layer, rep.component, rep.unit)
        if rep.unit in HEAD_UNITS and (site.n_heads is None or site.head_dim is None):
            raise ConfigError(
                f"representation {i}: unit {rep.unit!r} needs the number of heads of "
                f"{site.path}, which the model config does not give"
            )
        if rep.intervention_link_key is not None and rep.intervention_link_key in linked:
            # Linked representations share one intervention (one set of parameters).
            intervention = linked[rep.intervention_link_key]
        else:
            intervention = build_intervention(rep, site, i)
            if rep.intervention_link_key is not None:
                linked[rep.intervention_link_key] = intervention
        # An intervention that works on a module of its own at the site (a codebook) moves there.
        bind = getattr(intervention, "bind_site", None)
        if callable(bind):
            site = bind(model, site, rep) or site
        if isinstance(intervention, Intervention):
            # Inside a model the units are the site's whole width: embed_dim selects no prefix.
            intervention.in_model = True
        if rep.group_key is None:
            group = len(groups)
            groups[("__slot", i)] = group
        else:
            group = groups.setdefault(("__group", rep.group_key), len(groups))
        slots.append(Slot(i, slot_key(i, rep), rep, site, intervention, group, rep.unit in HEAD_UNITS))
    if config.mode == "serial" and any(r.group_key is not None for r in config.representations):
        raise ConfigError("group_key is not used in mode='serial': each intervention reads the stream before it")
    return slots


class Plan:
    """A config compiled against a model: what the executor (:mod:`.runner`) runs.

    * ``slots``: one :class:`Slot` per representation, in config order;
    * ``groups``: ``[(module, io, members)]``, the slots sharing one hooked module and side
      (``io`` is ``"input"`` or ``"output"``), in order of first appearance;
    * ``mode`` (``"parallel"`` or ``"serial"``), ``n_groups`` (source groups, pyvene's
      ``sources`` order) and ``has_collect`` (some intervention only records).

    The plan is static: nothing in it changes from call to call, except the per-slot caches
    of normalised locations (``Slot.units_cache``).
    """

    __slots__ = ("slots", "mode", "groups", "n_groups", "has_collect", "has_steps")

    def __init__(self, slots: list[Slot], mode: str):
        self.slots = slots
        self.mode = mode
        self.n_groups = max(s.group for s in slots) + 1
        self.has_collect = any(not s.intervention.modifies_output for s in slots)
        self.has_steps = any(s.steps for s in slots)  # some unit "t" slot (a recurrent cell)
        groups: dict = {}
        for slot in slots:
            key = (id(slot.site.module), slot.site.io)
            groups.setdefault(key, (slot.site.module, slot.site.io, []))[2].append(slot)
        self.groups = [(module, io, tuple(members)) for module, io, members in groups.values()]

    def __len__(self) -> int:
        return len(self.slots)

    def __iter__(self):
        return iter(self.slots)

    @property
    def interventions(self) -> list[Intervention]:
        return [s.intervention for s in self.slots]


def compile_plan(config: IntervenableConfig, model: nn.Module) -> Plan:
    """Resolve every representation's site on ``model``, build its intervention, group them."""
    return Plan(compile_slots(config, model), config.mode)
