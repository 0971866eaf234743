"""CodebookIntervention: force chosen codes of a codebook active (Codebook Features, 2023).

It sits at a site that :func:`pyvene_like.codebook.wrap_codebook` gave a codebook and names
the codes to force as ``codes=[[head, code], ...]`` (``head`` ``None`` or left out for a
one-group codebook). Positions come from ``unit_locations`` like any intervention (``None``:
every position), in ``forward`` and in ``generate`` (``timesteps="all"`` for every generated
token), so the KV cache changes nothing.

How it works: when the IntervenableModel is built, ``bind_site`` finds the codebook on the
site's tensor and moves the intervention onto the codebook module's output, reading the
codebook's input at the same units (``source_from="module_input"``). At the chosen units it
reruns the codebook's selection with the codes forced: in ``mode="replace"`` (default) the
forced codes of a head take the places of its lowest-ranked selected codes, in
``mode="append"`` they join the ``k`` selected ones (the output is the mean of ``k + m``
codes). A forced code is never counted twice. The codebook's recordings keep its own choice.
"""

from __future__ import annotations

from ..errors import ConfigError, SiteError
from ..interventions.base import Intervention
from ..registry import register_intervention
from ..sites import HEAD_UNITS, Site
from ..validation import check_choice, is_int
from .wrap import ATTRIBUTE, get_codebooks, module_key

MODES = ("replace", "append")


def _normalize_codes(codes) -> list[list]:
    """Any accepted form -> ``[[head or None, code], ...]`` (JSON-friendly, order kept)."""
    bad = ConfigError(
        f"codes must be a list of codes (one-group codebook), a list of [head, code] pairs, or a "
        f"dict {{head: [codes]}}; got {codes!r}. CodeInfo lists go through "
        f"pyvene_like.codebook.code_intervention_config"
    )
    if isinstance(codes, dict):
        out = []
        for head, ids in codes.items():
            if isinstance(head, str) and head.isdigit():
                head = int(head)
            if isinstance(ids, int):
                ids = [ids]
            if not isinstance(ids, (list, tuple)):
                raise bad
            out.extend([head, c] for c in ids)
    elif is_int(codes):
        out = [[None, codes]]
    elif isinstance(codes, (list, tuple)):
        out = []
        for entry in codes:
            if is_int(entry):
                out.append([None, entry])
            elif isinstance(entry, (list, tuple)) and len(entry) == 2:
                out.append([entry[0], entry[1]])
            else:
                raise bad
    else:
        raise bad
    if not out:
        raise ConfigError("codes is empty; name at least one code to force")
    for head, code in out:
        if head is not None and (not is_int(head) or head < 0):
            raise ConfigError(f"codes: head {head!r} is not a non-negative int (or None)")
        if not is_int(code) or code < 0:
            raise ConfigError(f"codes: code {code!r} is not a non-negative int")
    return [[None if head is None else int(head), int(code)] for head, code in out]


@register_intervention("codebook", "code")
class CodebookIntervention(Intervention):
    """Force ``codes`` active in the codebook at this site (see the module docstring)."""

    source_from = "module_input"
    supports_subspaces = False

    def __init__(self, codes, mode: str = "replace", embed_dim=None):
        super().__init__(embed_dim, None)
        check_choice(mode, "mode", MODES)
        self.codes = _normalize_codes(codes)
        self.mode = mode
        # The codebook is not a submodule: its parameters belong to the model, not to us.
        self.__dict__["_codebook"] = None
        self.__dict__["_forced"] = None

    def get_config(self):
        return {"codes": self.codes, "mode": self.mode, "embed_dim": self.embed_dim}

    @classmethod
    def example_kwargs(cls, embed_dim):
        return {"intervention_kwargs": {"codes": [1, 2], "mode": "append"}}

    @classmethod
    def example_model(cls, model, layer, component):
        """A copy of ``model`` with a one-group codebook (16 codes, k=2) at ``(layer, component)``."""
        import copy

        from ..codebook.wrap import wrap_codebook

        return wrap_codebook(copy.deepcopy(model), [(layer, component)], num_codes=16, k=2, seed=0)

    def bind_site(self, model, site: Site, rep) -> Site:
        """Called when an IntervenableModel is built: find the codebook at ``site`` and return
        the site to hook instead (the codebook module's output)."""
        if rep.unit in HEAD_UNITS:
            raise ConfigError(
                f"CodebookIntervention takes unit 'pos' (positions) and names heads in codes=[[head, "
                f"code], ...]; got unit {rep.unit!r}. Use the plain component, e.g. "
                f"{rep.component.replace('head_', '')!r}"
            )
        cbs = get_codebooks(model)
        found = cbs.find(site)
        if found is None:
            raise SiteError(
                f"no codebook at layer {rep.layer}, component {rep.component!r} ({site.description}); "
                f"the model has codebooks at: {', '.join(repr(n) for n in cbs.names())}"
            )
        cs, layer = found
        by_head: dict[int, list[int]] = {}
        for head, code in self.codes:
            if head is None:
                if layer.num_groups != 1:
                    raise ConfigError(
                        f"codes: code {code} names no head, but the codebook {cs.name} has "
                        f"{layer.num_groups} heads; give [head, code] pairs"
                    )
                head = 0
            by_head.setdefault(head, []).append(code)
        forced = layer.force(by_head, self.mode)
        self.__dict__["_codebook"] = layer
        self.__dict__["_forced"] = forced
        return Site(layer, f"{ATTRIBUTE}.{module_key(cs.name)}", "output", width=layer.dim,
                    description=f"the codebook at {cs.name} (output)")

    @property
    def codebook(self):
        """The bound :class:`~pyvene_like.codebook.CodebookLayer` (``None`` before binding)."""
        return self._codebook

    def forward(self, base, source=None, subspaces=None):
        if self._forced is None:
            raise ConfigError(
                "CodebookIntervention is not bound to a codebook: use it through an IntervenableModel "
                "built on a model wrapped with pyvene_like.codebook.wrap_codebook"
            )
        # ``source`` is the codebook's input at the chosen units: select again with codes forced.
        return self._codebook.quantize(source, self._forced, record=False)

    def extra_repr(self) -> str:
        return f"codes={self.codes}, mode={self.mode!r}"
