"""Declarative configs: where to intervene (RepresentationConfig) and how (IntervenableConfig)."""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import ConfigError, accepted, did_you_mean
from .registry import get_intervention_class
from .validation import (
    check_floating_tensor,
    check_non_negative_int,
    check_optional_positive_int,
    check_positive_int,
)

UNITS = ("pos", "h", "h.pos", "t")  # "t": time steps (calls of a recurrent cell), pyvene's GRU unit
MODES = ("parallel", "serial")


@dataclass
class RepresentationConfig:
    """One intervention site and its intervention.

    The positional order follows pyvene: ``RepresentationConfig(layer, component, unit,
    max_number_of_units, intervention_type, low_rank_dimension, subspace_partition,
    group_key, intervention_link_key, ...)``; keyword use is encouraged.

    ``component`` is a name from :data:`pyvene_like.COMPONENTS` (``"block_output"``,
    ``"head_attention_value_output"``, ...), optionally prefixed by a stack
    (``"decoder.block_output"``) for encoder-decoder models, or a raw module path ending
    in ``.input`` or ``.output`` (``"model.layers.3.mlp.down_proj.output"``;
    ``"model.layers[{layer}].mlp.output"`` substitutes ``layer``).
    """

    layer: int = 0
    component: str = "block_output"
    unit: str = "pos"
    max_number_of_units: int = 1
    intervention_type: Any = None
    low_rank_dimension: int | None = None
    subspace_partition: list | None = None
    group_key: Any = None
    intervention_link_key: Any = None
    intervention: Any = None
    intervention_kwargs: dict = field(default_factory=dict)
    source_representation: Any = None

    def __post_init__(self):
        self.layer = check_non_negative_int(self.layer, "layer")
        if not isinstance(self.component, str) or not self.component:
            raise ConfigError(f"component must be a non-empty string, got {self.component!r}")
        if self.unit not in UNITS:
            raise ConfigError(
                f"unit {self.unit!r} is not supported; accepted: {accepted(UNITS)}."
                f"{did_you_mean(self.unit, UNITS)}"
            )
        self.max_number_of_units = check_positive_int(self.max_number_of_units, "max_number_of_units")
        self.low_rank_dimension = check_optional_positive_int(self.low_rank_dimension, "low_rank_dimension")
        if self.subspace_partition is not None:
            from .interventions.base import check_partition

            self.subspace_partition = check_partition(self.subspace_partition, None)
        if self.intervention_kwargs is None:
            self.intervention_kwargs = {}
        if not isinstance(self.intervention_kwargs, dict):
            raise ConfigError(
                f"intervention_kwargs must be a dict, got {type(self.intervention_kwargs).__name__}"
            )
        if self.intervention is not None:
            from .interventions.base import Intervention

            if callable(self.intervention) and not isinstance(self.intervention, Intervention) \
                    and not inspect.isclass(self.intervention):
                # pyvene's {"intervention": fn}: a function of the base units alone
                from .interventions.basic import LambdaIntervention

                self.intervention = LambdaIntervention(self.intervention, needs_source=False)
            if not isinstance(self.intervention, Intervention):
                raise ConfigError(
                    f"intervention must be an Intervention instance or a function fn(base, source), got "
                    f"{self.intervention!r}; pass classes or names as intervention_type"
                )
        if self.intervention_type is not None:
            self.intervention_type = resolve_intervention_type(self.intervention_type)
        for key in ("group_key", "intervention_link_key"):
            value = getattr(self, key)
            try:
                hash(value)
            except TypeError:
                raise ConfigError(
                    f"{key} must be hashable (a string, an int or a tuple of them), got "
                    f"{value!r} ({type(value).__name__})"
                ) from None
        if self.source_representation is not None:
            self.source_representation = check_floating_tensor(self.source_representation, "source_representation")

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "intervention_type":
                value = type_name(value) if value is not None else None
            elif f.name == "intervention":
                if value is not None:
                    raise ConfigError(
                        "to_dict: this RepresentationConfig holds an intervention instance; "
                        "give intervention_type (a registered name) and intervention_kwargs instead "
                        "so the config can be written as JSON"
                    )
                continue
            elif f.name == "source_representation" and value is not None:
                value = value.tolist()
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict) -> RepresentationConfig:
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise ConfigError(f"a representation must be a RepresentationConfig or a dict, got {data!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in data if k not in names]
        if unknown:
            raise ConfigError(
                f"representation field {unknown[0]!r} is unknown; accepted: {accepted(sorted(names))}."
                f"{did_you_mean(unknown[0], names)}"
            )
        return cls(**data)


def resolve_intervention_type(value):
    """Accept a registered name, an Intervention subclass, or a plain function."""
    from .interventions.base import Intervention

    if isinstance(value, str):
        return get_intervention_class(value)
    if isinstance(value, LambdaFactory):
        return value
    if inspect.isclass(value):
        if issubclass(value, Intervention):
            return value
        raise ConfigError(
            f"intervention_type {value.__qualname__} is not an Intervention subclass; accepted: "
            f"a registered name, an Intervention subclass, or a function fn(base, source)"
        )
    if isinstance(value, Intervention):
        raise ConfigError(
            "intervention_type got an instance; pass the instance as intervention=... or the class "
            "as intervention_type"
        )
    if callable(value):
        return LambdaFactory(value)
    raise ConfigError(
        f"intervention_type {value!r} is not accepted; give a registered name (e.g. 'vanilla'), an "
        f"Intervention subclass, or a function fn(base, source)"
    )


class LambdaFactory:
    """A plain function given as intervention_type: built into a LambdaIntervention."""

    registry_name = "lambda"

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, **kwargs):
        from .interventions.basic import LambdaIntervention

        return LambdaIntervention(self.fn, **kwargs)

    def __eq__(self, other):
        return isinstance(other, LambdaFactory) and other.fn is self.fn

    def __hash__(self):
        return hash(self.fn)


def type_name(cls) -> str:
    name = getattr(cls, "registry_name", None)
    if isinstance(cls, LambdaFactory):
        raise ConfigError(
            "to_dict: a plain function intervention_type cannot be written as JSON; register a "
            "class with @register_intervention and use its name"
        )
    if name is None:
        raise ConfigError(
            f"to_dict: intervention_type {cls.__qualname__} is not registered; decorate it with "
            f"@register_intervention('<name>') so configs can name it"
        )
    return name


def _representation_list(representations: Any, expected: str) -> list[RepresentationConfig]:
    """One RepresentationConfig or dict, or a non-empty list of them, as RepresentationConfigs;
    anything else is a ConfigError that says what was ``expected``."""
    if isinstance(representations, (RepresentationConfig, dict)):
        representations = [representations]
    if not isinstance(representations, (list, tuple)) or not representations:
        raise ConfigError(f"{expected}, got {representations!r}")
    return [RepresentationConfig.from_dict(r) for r in representations]


class IntervenableConfig:
    """A list of representations plus the defaults they share.

    ``intervention_types`` gives the type of every representation that names none: one
    type for all, or a list with one entry per representation. ``mode`` is ``"parallel"``
    (every intervention reads unmodified sources and writes into one base run) or
    ``"serial"`` (intervention *i* carries stream *i* into stream *i+1*: source 0 -> source 1
    -> ... -> base).

    ``model_type`` (pyvene's field: the class of the model to wrap) is accepted and kept as
    ``config.model_type``; it selects nothing, as sites are resolved on the model given to
    :class:`~pyvene_like.IntervenableModel`.
    """

    def __init__(self, representations: RepresentationConfig | dict | Sequence[RepresentationConfig | dict] | None = None,
                 intervention_types: Any = None, mode: str = "parallel",
                 model_type: Any = None) -> None:
        if representations is None:
            representations = [RepresentationConfig()]
        reps = _representation_list(
            representations, "representations must be a non-empty list of RepresentationConfig or dicts")
        if mode not in MODES:
            raise ConfigError(f"mode {mode!r} is not supported; accepted: {accepted(MODES)}.{did_you_mean(mode, MODES)}")
        self.mode = mode
        self.model_type = model_type

        if isinstance(intervention_types, (list, tuple)):
            if len(intervention_types) != len(reps):
                raise ConfigError(
                    f"intervention_types has {len(intervention_types)} entries for "
                    f"{len(reps)} representations; give one type, or one per representation"
                )
            defaults = [resolve_intervention_type(t) if t is not None else None for t in intervention_types]
            self._shared_type = None
        else:
            default = (
                resolve_intervention_type(intervention_types) if intervention_types is not None else None
            )
            defaults = [default] * len(reps)
            self._shared_type = default if default is not None else get_intervention_class("vanilla")
        self.representations = []
        for rep, default in zip(reps, defaults):
            self._append(rep, default)

    def _append(self, rep: RepresentationConfig, default=None) -> None:
        if rep.intervention is None and rep.intervention_type is None:
            default = default or self._shared_type or get_intervention_class("vanilla")
            rep = dataclasses.replace(rep, intervention_type=default)
        else:
            self._shared_type = None  # a representation names its own type
        self.representations.append(rep)

    def add_intervention(self, representations: RepresentationConfig | dict | Sequence[RepresentationConfig | dict]) -> None:
        """Append representations (a RepresentationConfig, a dict, or a list of them); one that
        names no type takes the config's shared type (vanilla when there is none)."""
        for rep in _representation_list(
                representations, "add_intervention: expected a RepresentationConfig, a dict or a non-empty list of them"):
            self._append(rep)

    @property
    def intervention_types(self) -> Any:
        """As pyvene reports it: the one type when every representation takes the config's shared
        type, else a list with each representation's type."""
        if self._shared_type is not None:
            return self._shared_type
        return [r.intervention_type if r.intervention is None else type(r.intervention) for r in self.representations]

    def __len__(self):
        return len(self.representations)

    def __repr__(self):
        lines = ",\n  ".join(repr(r) for r in self.representations)
        return f"IntervenableConfig(mode={self.mode!r}, representations=[\n  {lines}\n])"

    def to_dict(self) -> dict:
        return {"mode": self.mode, "representations": [r.to_dict() for r in self.representations]}

    @classmethod
    def from_dict(cls, data: dict) -> IntervenableConfig:
        if not isinstance(data, dict) or "representations" not in data:
            raise ConfigError(
                f"IntervenableConfig.from_dict expects a dict with 'representations', got {data!r}"
            )
        extra = set(data) - {"mode", "representations", "intervention_types"}
        if extra:
            raise ConfigError(f"IntervenableConfig field {sorted(extra)[0]!r} is unknown; accepted: 'mode', 'representations', 'intervention_types'")
        return cls(
            data["representations"],
            intervention_types=data.get("intervention_types"),
            mode=data.get("mode", "parallel"),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> IntervenableConfig:
        if not isinstance(text, (str, bytes, bytearray)):
            raise ConfigError(f"IntervenableConfig.from_json expects JSON text (a str), got {type(text).__name__}")
        try:
            data = json.loads(text)
        except ValueError as e:  # JSONDecodeError, and UnicodeDecodeError for bytes
            raise ConfigError(f"IntervenableConfig.from_json: the text is not valid JSON ({e}): {text[:80]!r}") from None
        return cls.from_dict(data)

    def __eq__(self, other):
        return isinstance(other, IntervenableConfig) and self.mode == other.mode and all(
            _rep_eq(a, b) for a, b in zip(self.representations, other.representations)
        ) and len(self) == len(other)


def _rep_eq(a: RepresentationConfig, b: RepresentationConfig) -> bool:
    for f in dataclasses.fields(RepresentationConfig):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and torch.equal(x, y)):
                return False
        elif x != y:
            return False
    return True
