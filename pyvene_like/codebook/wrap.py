"""wrap_codebook: put codebook bottlenecks at any site this library resolves, on any model.

The model is changed in place, as peft does: its codebooks live in ``model.codebooks`` (a
:class:`CodebookSet`, so they are in ``model.state_dict()`` and follow ``.to()``), and one
persistent forward hook per site replaces the site's activation with the codebook's output.
A codebook works position by position, so ``generate`` gives the same tokens with and without
the KV cache. :func:`unwrap_codebook` removes the hooks and the codebooks, leaving the model
as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..engine.hooks import find_input, output_tensor, replace_input, replace_output
from ..errors import ConfigError, SiteError, accepted
from ..sites import BASE_COMPONENTS, COMPONENTS, HEAD_COMPONENTS, ModelLayout, Site, resolve_site
from ..validation import check_bool, check_int, check_positive_int, is_int
from .layer import CodebookLayer

ATTRIBUTE = "codebooks"


def site_name(layer: int, component: str) -> str:
    return f"layer_{layer}.{component}"


def module_key(name: str) -> str:
    """The key of the codebook for site ``name`` in :class:`CodebookSet` (``nn.Module`` names
    cannot hold dots)."""
    return name.replace(".", "-")




@dataclass(eq=False)
class CodebookSite:
    """Where a codebook sits: the (layer, component) asked for and the resolved site."""

    layer: int
    component: str
    site: Site

    @property
    def name(self) -> str:
        return site_name(self.layer, self.component)


class CodebookSet(nn.ModuleDict):
    """The codebooks of a wrapped model, by site; ``model.codebooks``.

    ``at(layer, component)`` gives one codebook; ``names()`` lists the sites. The hook handles
    live here so that :func:`unwrap_codebook` can remove exactly what was added.
    """

    def __init__(self):
        super().__init__()
        self._sites: dict[str, CodebookSite] = {}
        self._handles: dict[str, object] = {}

    def names(self) -> list[str]:
        return list(self._sites)

    def sites(self) -> dict[str, CodebookSite]:
        return dict(self._sites)

    def at(self, layer: int, component: str) -> CodebookLayer:
        name = site_name(layer, component)
        if name not in self._sites:
            raise SiteError(
                f"no codebook at layer {layer}, component {component!r}; the model has codebooks "
                f"at: {accepted(self._sites) or 'none'}"
            )
        return self[module_key(name)]

    def find(self, site: Site) -> tuple[CodebookSite, CodebookLayer] | None:
        """The codebook on the same tensor as ``site`` (same module, side and columns), if any.

        ``head_attention_value_output`` and ``attention_value_output`` are the same tensor."""
        for name, cs in self._sites.items():
            s = cs.site
            if s.module is not site.module or s.io != site.io:
                continue
            if (s.columns is None) != (site.columns is None):
                continue
            if s.columns is not None and not torch.equal(s.columns, site.columns):
                continue
            return cs, self[module_key(name)]
        return None

    def _add(self, cs: CodebookSite, layer: CodebookLayer, handle) -> None:
        self[module_key(cs.name)] = layer
        self._sites[cs.name] = cs
        self._handles[cs.name] = handle

    def _remove_all(self) -> None:
        for handle in self._handles.values():
            handle.remove()
        self._handles.clear()
        self._sites.clear()


def get_codebooks(model: nn.Module) -> CodebookSet:
    """``model.codebooks``, or a :class:`SiteError` if ``model`` has none."""
    cbs = getattr(model, ATTRIBUTE, None) if isinstance(model, nn.Module) else None
    if not isinstance(cbs, CodebookSet) or not cbs.names():
        raise SiteError(
            f"{type(model).__name__} has no codebooks; insert them first with "
            f"pyvene_like.codebook.wrap_codebook(model, sites=[...], num_codes=..., k=...)"
        )
    return cbs


def _expand_sites(layout: ModelLayout, sites, layers) -> list[tuple[int, str]]:
    if isinstance(sites, (str, tuple)):
        sites = [sites]
    if not isinstance(sites, (list, tuple)) or not sites:
        raise ConfigError(
            f"sites must be a non-empty list of components (every layer, or those in layers=) or "
            f"(layer, component) pairs, e.g. ['head_attention_value_output'] or [(0, 'mlp_output')]; "
            f"got {sites!r}"
        )
    if layers is not None:
        if is_int(layers):
            layers = [layers]
        if not all(is_int(i) and i >= 0 for i in layers):
            raise ConfigError(f"layers must be a non-negative int or a list of them, got {layers!r}")
    out: list[tuple[int, str]] = []
    for entry in sites:
        if isinstance(entry, str):
            head, _, name = entry.rpartition(".")
            prefix = head if name in COMPONENTS else ""
            if name in BASE_COMPONENTS and BASE_COMPONENTS[name][0] == "embed":
                out.append((0, entry))
                continue
            if name in COMPONENTS:
                n = len(layout.stack(prefix, entry)[1])
            elif "{layer}" in entry:
                n = len(layout.stack("", entry)[1])
            else:
                out.append((0, entry))
                continue
            out.extend((i, entry) for i in (range(n) if layers is None else layers))
        elif (isinstance(entry, (tuple, list)) and len(entry) == 2 and is_int(entry[0])
              and isinstance(entry[1], str)):
            out.append((entry[0], entry[1]))
        else:
            raise ConfigError(
                f"sites: entry {entry!r} is not accepted; give a component name such as "
                f"'mlp_output' (every layer) or a (layer, component) pair such as (0, 'mlp_output')"
            )
    return out


def _site_param(model: nn.Module, module: nn.Module):
    for p in list(module.parameters()) + list(model.parameters()):
        if p.device.type != "meta":
            return p
    return None


def _make_hook(layer: CodebookLayer, site: Site):
    cols = site.columns

    def apply(x):
        if cols is None:
            return layer(x)
        c = site.columns_on(x.device)
        return x.index_copy(-1, c, layer(x.index_select(-1, c)).to(x.dtype))

    if site.io == "output":

        def post(m, args, kwargs, output):
            x = output if type(output) is torch.Tensor else output_tensor(output)
            if x is None:
                raise SiteError(f"codebook at {site.description}: the module returned no tensor")
            return replace_output(output, apply(x))

        return post

    def pre(m, args, kwargs):
        x, where = find_input(args, kwargs)
        if x is None:
            raise SiteError(f"codebook at {site.description}: the module got no tensor input")
        return replace_input(args, kwargs, where, apply(x))

    return pre


def wrap_codebook(model: nn.Module, sites: str | tuple[int, str] | Sequence[str | tuple[int, str]], num_codes: int, k: int = 1, *,
                  layers: int | Sequence[int] | None = None,
                  similarity: str = "inner_product", layer_norm: bool = True,
                  num_codebooks: int = 1, seed: int | None = None) -> nn.Module:
    """Insert a :class:`CodebookLayer` at each site of ``model`` (in place) and return ``model``.

    ``sites``: component names (``"head_attention_value_output"``, ``"attention_output"``,
    ``"mlp_output"``, ``"block_output"``, a stack-prefixed or module-path component; every layer,
    or those in ``layers``) or ``(layer, component)`` pairs. A ``head_*`` component gets one
    codebook per attention head; other sites get ``num_codebooks`` groups (default one).
    ``seed`` makes the random codes reproducible. The model still runs ``forward`` and
    ``generate``; ``model.codebooks`` holds the codebooks; :func:`unwrap_codebook` undoes it.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_positive_int(num_codes, "num_codes")
    check_positive_int(k, "k")
    check_positive_int(num_codebooks, "num_codebooks")
    check_bool(layer_norm, "layer_norm")
    if seed is not None:
        check_int(seed, "seed", minimum=0, maximum=2**64 - 1)  # what torch.Generator.manual_seed holds
    layout = ModelLayout(model)
    pairs = _expand_sites(layout, sites, layers)
    existing = getattr(model, ATTRIBUTE, None)
    if existing is not None and not isinstance(existing, CodebookSet):
        raise ConfigError(
            f"{type(model).__name__} already has an attribute {ATTRIBUTE!r} that is not a CodebookSet; "
            f"cannot wrap it"
        )
    cbs = existing if existing is not None else CodebookSet()
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    planned: list[tuple[CodebookSite, CodebookLayer]] = []
    for layer_idx, component in pairs:
        is_head = component.rpartition(".")[2] in HEAD_COMPONENTS
        site = resolve_site(layout, layer_idx, component, "h" if is_head else "pos")
        cs = CodebookSite(layer_idx, component, site)
        taken = cbs.find(site) or next(
            ((c, cb) for c, cb in planned if c.site.module is site.module and c.site.io == site.io
             and (c.site.columns is None) == (site.columns is None)
             and (site.columns is None or torch.equal(c.site.columns, site.columns))), None)
        if taken is not None:
            raise ConfigError(
                f"sites: layer {layer_idx}, {component!r} ({site.description}) already has a codebook "
                f"({taken[0].name}); give each site once"
            )
        if site.width is None:
            raise SiteError(
                f"sites: cannot tell the width of {site.description} for layer {layer_idx}, "
                f"{component!r}; use a site whose width the model config or module gives"
            )
        if is_head:
            if site.n_heads is None:
                raise SiteError(
                    f"sites: {component!r} splits into heads, but the model config does not give "
                    f"the number of heads"
                )
            groups = site.n_heads
        else:
            groups = num_codebooks
            if site.width % groups:
                raise ConfigError(
                    f"num_codebooks={num_codebooks} does not divide the width {site.width} of "
                    f"{site.description} into equal chunks"
                )
        p = _site_param(model, site.module)
        cb = CodebookLayer(site.width, num_codes, k, groups, similarity=similarity,
                           layer_norm=layer_norm, name=cs.name, generator=gen,
                           device=None if p is None else p.device,
                           dtype=None if p is None or not p.is_floating_point() else p.dtype)
        planned.append((cs, cb))
    # Every site resolved and every layer built: only now is the model changed.
    if existing is None:
        setattr(model, ATTRIBUTE, cbs)
    for cs, cb in planned:
        hook = _make_hook(cb, cs.site)
        if cs.site.io == "output":
            handle = cs.site.module.register_forward_hook(hook, with_kwargs=True)
        else:
            handle = cs.site.module.register_forward_pre_hook(hook, with_kwargs=True)
        cbs._add(cs, cb, handle)
    return model


def unwrap_codebook(model: nn.Module) -> nn.Module:
    """Remove every codebook hook and ``model.codebooks``; the model computes as before wrapping."""
    cbs = get_codebooks(model)
    cbs._remove_all()
    delattr(model, ATTRIBUTE)
    return model

