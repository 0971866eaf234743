"""CodeInfo: which code, in which codebook (layer, head, site); and a parser for code lists.

Lists of codes are shared as lines such as ``Code: 4670, Layer: 0, Head: 13`` (the codebook
features webapp and tutorial write them so). :func:`parse_code_infos` reads them;
:func:`code_intervention_config` turns CodeInfos into the representations of an
:class:`~pyvene_like.IntervenableModel` that forces them (one intervention per codebook).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ConfigError, accepted, did_you_mean
from ..validation import check_non_negative_int

if TYPE_CHECKING:
    from ..config import RepresentationConfig

_FIELDS = ("code", "layer", "head", "site")
_INT_FIELDS = ("code", "layer", "head")


@dataclass
class CodeInfo:
    """One code of one codebook.

    ``code``: its index in the codebook; ``layer``: the layer of the codebook; ``head``: the
    head (group) of a grouped codebook, ``None`` for a one-group codebook; ``site``: the
    component the codebook sits at (``"head_attention_value_output"``, ``"mlp_output"``, ...),
    ``None`` when the caller supplies it later.
    """

    code: int
    layer: int
    head: int | None = None
    site: str | None = None

    def __post_init__(self):
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if name == "head" and value is None:
                continue
            setattr(self, name, check_non_negative_int(value, f"CodeInfo.{name}"))
        if self.site is not None and (not isinstance(self.site, str) or not self.site):
            raise ConfigError(f"CodeInfo.site must be a component name or None, got {self.site!r}")

    @classmethod
    def from_str(cls, line: str, site: str | None = None) -> CodeInfo:
        """Parse ``"Code: 4670, Layer: 0, Head: 13"`` (keys in any case and order; ``Head`` and
        ``Site`` optional, ``Head: None`` allowed). ``site`` fills a missing ``Site``."""
        if not isinstance(line, str):
            raise ConfigError(f"CodeInfo.from_str: expected a line of text, got {type(line).__name__}")
        values: dict = {}
        for part in line.split(","):
            part = part.strip()
            if not part:
                continue
            key, sep, value = part.partition(":")
            key, value = key.strip().lower(), value.strip()
            if not sep or not value:
                raise ConfigError(
                    f"code line {line.strip()!r}: {part!r} is not a 'Key: value' pair; expected a line "
                    f"like 'Code: 4670, Layer: 0, Head: 13'"
                )
            if key not in _FIELDS:
                raise ConfigError(
                    f"code line {line.strip()!r}: key {key!r} is not known; accepted: "
                    f"{accepted(k.capitalize() for k in _FIELDS)}.{did_you_mean(key, _FIELDS)}"
                )
            if key in values:
                raise ConfigError(f"code line {line.strip()!r}: {key.capitalize()!r} is given twice")
            if key in _INT_FIELDS:
                if key == "head" and value.lower() == "none":
                    values[key] = None
                    continue
                if not re.fullmatch(r"\d+", value):
                    raise ConfigError(
                        f"code line {line.strip()!r}: {key.capitalize()} {value!r} is not a "
                        f"non-negative integer"
                    )
                values[key] = int(value)
            else:
                values[key] = value
        missing = [k for k in ("code", "layer") if k not in values]
        if missing:
            raise ConfigError(
                f"code line {line.strip()!r}: {missing[0].capitalize()!r} is missing; expected a line "
                f"like 'Code: 4670, Layer: 0, Head: 13'"
            )
        values.setdefault("site", site)
        return cls(**values)

    def __str__(self) -> str:
        text = f"Code: {self.code}, Layer: {self.layer}"
        if self.head is not None:
            text += f", Head: {self.head}"
        if self.site is not None:
            text += f", Site: {self.site}"
        return text


def parse_code_infos(text: str, site: str | None = None) -> list[CodeInfo]:
    """Every non-blank line of ``text`` (``#`` starts a comment) as a :class:`CodeInfo`.

    ``site`` fills the site of lines that give none (the codebook paper's lists name only
    code, layer and head)."""
    if not isinstance(text, str):
        raise ConfigError(f"parse_code_infos: expected text, got {type(text).__name__}")
    infos = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            infos.append(CodeInfo.from_str(line, site=site))
        except ConfigError as e:
            raise ConfigError(f"line {number}: {e}") from None
    return infos


def code_intervention_config(code_infos: CodeInfo | Iterable[CodeInfo], site: str | None = None,
                             mode: str = "replace") -> list[RepresentationConfig]:
    """RepresentationConfigs forcing ``code_infos``: one ``"codebook"`` intervention per
    (layer, site), its codes as ``[[head, code], ...]``.

    ``site`` is used for CodeInfos without one. The head form of a component names the same
    tensor as the plain one (``head_attention_value_output`` -> ``attention_value_output``):
    heads are named in the codes, positions by ``unit_locations`` (``None``: every position).
    """
    from ..config import RepresentationConfig

    if isinstance(code_infos, CodeInfo):
        code_infos = [code_infos]
    groups: dict[tuple[int, str], list[list[int]]] = {}
    for info in code_infos:
        if not isinstance(info, CodeInfo):
            raise ConfigError(f"code_infos: expected CodeInfo objects, got {info!r}")
        where = info.site or site
        if where is None:
            raise ConfigError(
                f"code_infos: {info} names no site; give CodeInfo.site or site= (e.g. "
                f"site='head_attention_value_output')"
            )
        head, _, name = where.rpartition(".")
        if name.startswith("head_"):
            where = (head + "." if head else "") + name[len("head_"):]
        groups.setdefault((info.layer, where), []).append(
            [0 if info.head is None else info.head, info.code]
        )
    if not groups:
        raise ConfigError("code_infos is empty; give at least one CodeInfo")
    return [
        RepresentationConfig(layer, component, "pos", intervention_type="codebook",
                             intervention_kwargs={"codes": codes, "mode": mode})
        for (layer, component), codes in groups.items()
    ]
