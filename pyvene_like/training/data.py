"""Factual and counterfactual datasets from a causal model, and the collator that batches them.

Datasets are ``datasets.Dataset``s with pyvene's column names:

* ``input_ids``: the base input (the encoded input setting, or token ids);
* ``source_input_ids``: ``[n_sources, ...]`` source inputs per example;
* ``labels``: the counterfactual label (what the causal model says after the interchange);
* ``base_labels``: the base input's own label (for factual accuracy);
* ``intervention_id``: which variables were interchanged (a key of ``intervention_ids``);
* optionally ``base_locations`` / ``source_locations``: ``[n_interventions, n_units]`` positions.

Generation is vectorised: every example of a dataset comes out of one batched run of the
causal model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import datasets
import torch

from ..errors import ConfigError, ShapeError
from ..types import Seed, UnitLocations
from ..validation import check_int, check_int_list, is_int
from .causal_model import CausalModel, _generator


def _to_dataset(columns: dict[str, torch.Tensor]) -> datasets.Dataset:
    ds = datasets.Dataset.from_dict({k: v.numpy() for k, v in columns.items()})
    return ds.with_format("torch")


def _encoders(model: CausalModel, input_encoder, label_encoder):
    return input_encoder or model.encode_inputs, label_encoder or model.encode_output


def generate_factual_dataset(
    model: CausalModel,
    size: int,
    seed: Seed = 0,
    input_encoder: Callable | None = None,
    label_encoder: Callable | None = None,
) -> datasets.Dataset:
    """``size`` examples of the causal model's input -> output behaviour: columns
    ``input_ids`` and ``labels``."""
    _check_model(model)
    _check_size(size)
    setting = model.run_forward(model.sample_inputs(size, _generator(seed)))
    enc_in, enc_out = _encoders(model, input_encoder, label_encoder)
    return _to_dataset({"input_ids": enc_in(setting), "labels": enc_out(setting)})


def _check_model(model) -> None:
    if not isinstance(model, CausalModel):
        raise ConfigError(
            f"model: expected a pyvene_like CausalModel (e.g. pv.hierarchical_equality()), got "
            f"{type(model).__name__}"
        )


def _check_size(size):
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ConfigError(f"size: expected a positive int, got {size!r}")
    if size >= 2**63:  # past int64: a raw overflow in torch.rand
        raise ConfigError(f"size: expected a positive int that fits in int64 (< 2**63), got {size!r}")


def _variables(key, value) -> list:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(
            f"intervention_ids[{key!r}]: expected a variable name or a list of them, got {value!r}"
        )
    return list(value)


def _check_ids(model: CausalModel, intervention_ids) -> dict:
    if isinstance(intervention_ids, Mapping):
        ids = {k: _variables(k, intervention_ids[k]) for k in intervention_ids}
    elif isinstance(intervention_ids, (list, tuple)):
        ids = {i: _variables(i, v) for i, v in enumerate(intervention_ids)}
    else:
        raise ConfigError(
            f"intervention_ids: expected {{id: [variables]}} such as {{0: ['WX'], 1: ['YZ'], "
            f"2: ['WX', 'YZ']}}, got {intervention_ids!r}"
        )
    if not ids:
        raise ConfigError("intervention_ids: give at least one id -> [variables]")
    for k, vars_ in ids.items():
        if isinstance(k, bool) or not isinstance(k, int):
            raise ConfigError(f"intervention_ids: ids must be ints, got {k!r}")
        if not vars_:
            raise ConfigError(f"intervention_ids[{k}]: names no variable")
        for v in vars_:
            if v not in model.parents:
                raise ConfigError(
                    f"intervention_ids[{k}]: {v!r} is not a variable of the causal model; "
                    f"variables: {model.variables}"
                )
            if v in model.outputs:
                raise ConfigError(
                    f"intervention_ids[{k}]: {v!r} is an output; interchanging it just copies the "
                    f"source's label. Intervene on intermediate variables"
                )
    return ids


def generate_counterfactual_dataset(
    model: CausalModel,
    size: int,
    intervention_ids: Mapping[int, Sequence[str]],
    seed: Seed = 0,
    input_encoder: Callable | None = None,
    label_encoder: Callable | None = None,
    id_weights: Sequence[float] | None = None,
    distinct_sources: bool = False,
    base_locations: int | Sequence[Sequence[int]] | None = None,
    source_locations: int | Sequence[Sequence[int]] | None = None,
) -> datasets.Dataset:
    """``size`` interchange-intervention examples, drawn in one batched run.

    Args:
        intervention_ids: ``{id: [variables]}``: id ``k`` interchanges those variables, e.g.
            ``{0: ["WX"], 1: ["YZ"], 2: ["WX", "YZ"]}``; each example draws an id (uniformly,
            or by ``id_weights``).
        distinct_sources: ``False`` (pyvene's DAS setting): one source per example supplies
            every interchanged variable. ``True``: the j-th variable of an id comes from the
            j-th source, so ``source_input_ids`` holds ``max(len(vars))`` sources.
        base_locations / source_locations: optional unit positions stored with every example:
            an int, or ``[n_interventions][n_units]``.

    Returns a ``datasets.Dataset`` (torch format) with columns ``input_ids``,
    ``source_input_ids`` ``[n_sources, ...]``, ``labels`` (counterfactual), ``base_labels``,
    ``intervention_id`` and, when given, ``base_locations`` / ``source_locations``.
    """
    _check_model(model)
    _check_size(size)
    ids = _check_ids(model, intervention_ids)
    keys = list(ids)
    g = _generator(seed)
    if id_weights is None:
        choice = torch.randint(0, len(keys), (size,), generator=g)
    else:
        w = torch.as_tensor(id_weights, dtype=torch.float)
        if w.shape != (len(keys),) or (w < 0).any() or w.sum() <= 0:
            raise ConfigError(
                f"id_weights: expected {len(keys)} non-negative weights (one per id {keys}), got {id_weights!r}"
            )
        choice = torch.multinomial(w, size, replacement=True, generator=g)
    id_col = torch.as_tensor(keys)[choice]
    n_sources = max(len(v) for v in ids.values()) if distinct_sources else 1

    base = model.sample_inputs(size, g)
    srcs = [model.sample_inputs(size, g) for _ in range(n_sources)]
    src_runs = [model.run_forward(s) for s in srcs]
    fixed: dict[str, tuple] = {}
    for var in dict.fromkeys(v for vs in ids.values() for v in vs):
        mask = torch.zeros(size, dtype=torch.bool)
        value = None
        for j, run in enumerate(src_runs):
            # Which examples take `var` from source j.
            takes = [k for k, vs in ids.items() if var in vs and (not distinct_sources or vs.index(var) == j)]
            if not takes:
                continue
            m = torch.isin(id_col, torch.as_tensor(takes))
            val = run[var]
            value = val.clone() if value is None else torch.where(
                m.reshape(-1, *([1] * (val.dim() - 1))), val, value
            )
            mask |= m
        fixed[var] = (value, mask)
    enc_in, enc_out = _encoders(model, input_encoder, label_encoder)
    cf = model.run_forward(base, fixed)
    base_run = model.run_forward(base)
    columns = {
        "input_ids": enc_in(base_run),
        "source_input_ids": torch.stack([enc_in(r) for r in src_runs], dim=1),
        "labels": enc_out(cf),
        "base_labels": enc_out(base_run),
        "intervention_id": id_col,
    }
    if source_locations is not None and base_locations is None:
        raise ConfigError("source_locations: give base_locations too (the source positions are only "
                          "read together with the base positions)")
    for name, loc in (("base_locations", base_locations), ("source_locations", source_locations)):
        if loc is not None:
            t = _locations(loc, name)
            columns[name] = t.unsqueeze(0).expand(size, *t.shape).clone()
    return _to_dataset(columns)


def _locations(loc, name: str) -> torch.Tensor:
    """``base_locations`` / ``source_locations`` of generate_counterfactual_dataset as a
    ``[n_interventions, n_units]`` long tensor: an int, ``[units]`` or ``[[units], ...]``
    (one row per intervention, all of one length). Floats and bools are refused, not truncated."""
    accepted_forms = "accepted: an int, a list of ints [units], or one such list per intervention [[units], ...]"
    if isinstance(loc, torch.Tensor):
        if loc.dtype.is_floating_point or loc.dtype.is_complex or loc.dtype == torch.bool or loc.dim() > 2:
            raise ConfigError(f"{name}: got a tensor of shape {tuple(loc.shape)}, dtype {loc.dtype}; {accepted_forms}")
        loc = loc.tolist()
    if is_int(loc):
        rows = [[loc]]
    elif isinstance(loc, (list, tuple)) and loc and all(is_int(v) for v in loc):
        rows = [list(loc)]
    elif isinstance(loc, (list, tuple)) and loc and all(isinstance(r, (list, tuple)) for r in loc):
        rows = [check_int_list(r, f"{name}[{i}]") for i, r in enumerate(loc)]
        if len({len(r) for r in rows}) != 1:
            raise ConfigError(f"{name}: rows of different lengths {[len(r) for r in rows]}; {accepted_forms}")
    else:
        raise ConfigError(f"{name}: got {loc!r}; {accepted_forms}")
    if any(v >= 2**63 or v < -(2**63) for r in rows for v in r):
        raise ConfigError(f"{name}: got {loc!r}; positions must fit in int64")
    return torch.tensor(rows, dtype=torch.long)


# -- batching -----------------------------------------------------------------------------------
REQUIRED_COLUMNS = ("input_ids", "source_input_ids", "labels")


def check_columns(dataset, label: str, need_ids: bool) -> None:
    names = list(getattr(dataset, "column_names", None) or (dataset.keys() if isinstance(dataset, Mapping) else []))
    need = list(REQUIRED_COLUMNS) + (["intervention_id"] if need_ids else [])
    missing = [c for c in need if c not in names]
    if missing:
        raise ConfigError(
            f"{label}: missing column {missing[0]!r} (has {names}); a counterfactual dataset needs "
            f"{need}" + (" because subspaces is given per intervention id" if need_ids and missing == ["intervention_id"] else "")
        )


def check_intervention_ids(ids, label: str = "intervention_id") -> None:
    """The ``intervention_id`` column: one integer id per example (a float id would be truncated
    when it picks its subspaces)."""
    if not isinstance(ids, torch.Tensor) or ids.dim() != 1 or ids.dtype.is_floating_point \
            or ids.dtype.is_complex or ids.dtype == torch.bool:
        what = (f"shape {tuple(ids.shape)}, dtype {ids.dtype}" if isinstance(ids, torch.Tensor)
                else type(ids).__name__)
        raise ShapeError(f"{label}: expected one integer id per example (shape [n_examples]), got {what}")


def check_location_columns(columns: Mapping, label: str, n_interventions: int) -> None:
    """``base_locations`` / ``source_locations`` columns: integer positions shaped
    ``[n_examples, n_interventions, n_units]`` (what :func:`generate_counterfactual_dataset`
    stores); ``source_locations`` only together with ``base_locations``, whose first two
    dimensions it shares."""
    names = list(columns.keys())
    if "source_locations" in names and "base_locations" not in names:
        raise ConfigError(
            f"{label}: has a 'source_locations' column but no 'base_locations'; the source positions "
            f"are only read together with the base positions (give both, or neither to use unit_locations)"
        )
    shapes = {}
    for name in ("base_locations", "source_locations"):
        if name not in names:
            continue
        t = columns[name]
        ok = isinstance(t, torch.Tensor) and t.dim() == 3 and not (
            t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool)
        if not ok:
            what = (f"shape {tuple(t.shape)}, dtype {t.dtype}" if isinstance(t, torch.Tensor)
                    else f"{type(t).__name__} (rows of different lengths?)")
            raise ShapeError(
                f"{label}: column {name!r} has {what}; accepted: integer positions shaped [n_examples, "
                f"n_interventions, n_units] (generate_counterfactual_dataset(..., {name}=[[0]]) for one "
                f"intervention at unit 0)"
            )
        if t.shape[1] != n_interventions:
            raise ShapeError(
                f"{label}: column {name!r} has positions for {t.shape[1]} intervention(s) (shape "
                f"{tuple(t.shape)}), but the model has {n_interventions}"
            )
        shapes[name] = tuple(t.shape)
    if len(shapes) == 2 and shapes["source_locations"][:2] != shapes["base_locations"][:2]:
        raise ShapeError(
            f"{label}: columns 'source_locations' {shapes['source_locations']} and 'base_locations' "
            f"{shapes['base_locations']} differ in examples or interventions"
        )


class CounterfactualCollator:
    """Turns rows (or stacked columns) of a counterfactual dataset into ``IntervenableModel``
    call arguments: ``{"base", "sources", "unit_locations", "subspaces", "labels",
    "intervention_id", "base_labels"}``.

    Args:
        subspaces: ``None``; or ``{intervention id: subspaces}`` where ``subspaces`` is a list of
            partition ids for a single intervention (``{0: [0], 1: [1], 2: [0, 1]}``) or one such
            list per intervention (``{0: [[0], None]}``); each example gets its id's subspaces.
        input_key: ``None`` passes inputs positionally (``model(x)``); a name such as
            ``"input_ids"`` or ``"inputs_embeds"`` passes ``model(**{input_key: x})`` together
            with ``attention_mask`` / ``source_attention_mask`` columns when present.
        unit_locations: used when the rows carry no ``base_locations``: any value
            ``IntervenableModel`` accepts (default ``0``, the first and only unit of an MLP layer).
        n_interventions: the number of interventions of the model (for per-id subspaces).
    """

    def __init__(self, subspaces: Mapping[int, Sequence[Any] | None] | None = None, input_key: str | None = None,
                 unit_locations: UnitLocations = 0, n_interventions: int = 1) -> None:
        if input_key is not None and (not isinstance(input_key, str) or not input_key.isidentifier()):
            raise ConfigError(
                f"input_key must be None (inputs passed positionally) or the name of the model's input "
                f"argument such as 'input_ids' or 'inputs_embeds', got {input_key!r}"
            )
        self.input_key = input_key
        self.unit_locations = unit_locations
        self.n_interventions = n_interventions
        self.subspace_tables = None if subspaces is None else self._tables(subspaces, n_interventions)

    @staticmethod
    def _tables(subspaces, n: int):
        if not isinstance(subspaces, Mapping) or not subspaces:
            raise ConfigError(
                f"subspaces: expected {{intervention id: subspaces}}, e.g. {{0: [0], 1: [1], 2: [0, 1]}}, "
                f"got {subspaces!r}"
            )
        per_slot: list[dict] = [dict() for _ in range(n)]
        for k, spec in subspaces.items():
            # ids are compared with the int64 intervention_id column
            check_int(k, "subspaces: keys are intervention ids; a key", minimum=-(2**63), maximum=2**63 - 1)
            if spec is None or (isinstance(spec, (list, tuple)) and spec and all(is_int(i) for i in spec)):
                spec = [spec] * n if n == 1 else None
            if not isinstance(spec, (list, tuple)) or len(spec) != n:
                raise ConfigError(
                    f"subspaces[{k}]: expected a list of subspace ids (one intervention) or one list per "
                    f"intervention ({n}), got {subspaces[k]!r}"
                )
            for slot, ids in enumerate(spec):
                if ids is not None:
                    field = f"subspaces[{k}]" + (f"[{slot}]" if n > 1 else "")
                    ids = check_int_list(ids, field, minimum=0)
                    too_big = [i for i in ids if i >= 2**63]
                    if too_big:
                        raise ConfigError(f"{field}: subspace id {too_big[0]} is past any site's width")
                per_slot[slot][k] = ids
        keys = sorted(subspaces)
        tables = []
        for slot in range(n):
            entries = per_slot[slot]
            if all(v is None for v in entries.values()):
                tables.append(None)
                continue
            if any(v is None for v in entries.values()):
                raise ConfigError(
                    f"subspaces: intervention {slot} has subspaces for some ids but None for others; "
                    f"give every id a list"
                )
            width = max(len(v) for v in entries.values())
            # One row per id, in key order (looked up with searchsorted, so sparse ids such as
            # {0, 10**9} cost two rows); padded with the row's first id: a repeat selects nothing new.
            table = torch.tensor([entries[k] + [entries[k][0]] * (width - len(entries[k])) for k in keys],
                                 dtype=torch.long)
            tables.append((torch.tensor(keys, dtype=torch.long), table, set(entries)))
        return tables

    def known_ids(self) -> set | None:
        if self.subspace_tables is None:
            return None
        return next((t[2] for t in self.subspace_tables if t is not None), None)

    def subspaces_for(self, ids: torch.Tensor) -> list[torch.Tensor | None] | None:
        if self.subspace_tables is None:
            return None
        check_intervention_ids(ids)
        out = []
        known = self.known_ids()
        unknown = set(ids.unique().tolist()) - known
        if unknown:
            raise ConfigError(
                f"intervention_id: the data has id(s) {sorted(unknown)} with no entry in subspaces "
                f"(which covers {sorted(known)})"
            )
        for t in self.subspace_tables:
            if t is None:
                out.append(None)
                continue
            keys, table, _ = t
            out.append(table[torch.searchsorted(keys, ids.long().cpu())])
        return out

    def _wrap(self, x, mask):
        if self.input_key is None:
            return x
        d = {self.input_key: x}
        if mask is not None:
            d["attention_mask"] = mask
        return d

    def __call__(self, batch):
        if isinstance(batch, (list, tuple)):  # rows from a DataLoader
            batch = {k: torch.stack([torch.as_tensor(r[k]) for r in batch]) for k in batch[0]}
        check_columns(batch, "batch", self.subspace_tables is not None)
        base = batch["input_ids"]
        src = batch["source_input_ids"]
        if src.dim() < 2 or src.shape[0] != base.shape[0]:
            raise ShapeError(
                f"source_input_ids: expected [batch, n_sources, ...] with batch {base.shape[0]}, got "
                f"shape {tuple(src.shape)}"
            )
        src_mask = batch.get("source_attention_mask")
        sources = [
            self._wrap(src[:, j], None if src_mask is None else src_mask[:, j]) for j in range(src.shape[1])
        ]
        out = {
            "base": self._wrap(base, batch.get("attention_mask")),
            "sources": sources,
            "labels": batch["labels"],
        }
        check_location_columns(batch, "batch", self.n_interventions)
        if "base_locations" in batch:
            b = batch["base_locations"].transpose(0, 1)  # [n_interventions, batch, units]
            s = batch.get("source_locations", batch["base_locations"]).transpose(0, 1)
            out["unit_locations"] = {"sources->base": (s.tolist(), b.tolist())}
        else:
            out["unit_locations"] = self.unit_locations if isinstance(self.unit_locations, Mapping) else {
                "sources->base": self.unit_locations
            }
        if "intervention_id" in batch:
            out["intervention_id"] = batch["intervention_id"]
            out["subspaces"] = self.subspaces_for(batch["intervention_id"])
        else:
            out["subspaces"] = None
        if "base_labels" in batch:
            out["base_labels"] = batch["base_labels"]
        return out
