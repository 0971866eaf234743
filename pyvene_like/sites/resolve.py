"""(model, layer, component, unit) -> Site, by introspecting the module tree and config."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import SiteError, accepted, did_you_mean
from . import families as fam
from .vocabulary import BASE_COMPONENTS, COMPONENTS, HEAD_COMPONENTS, HEAD_UNITS


@dataclass(eq=False)
class Site:
    """A hookable place: a module, which side of it, and how its last dim splits into heads."""

    module: nn.Module
    path: str
    io: str  # "input" | "output"
    width: int | None = None  # features of the addressed (sub)tensor
    n_heads: int | None = None
    head_dim: int | None = None
    # Indices into the module's last dim when the site is part of a fused projection.
    columns: torch.Tensor | None = None
    description: str = ""
    _col_cache: dict = field(default_factory=dict, repr=False)

    def columns_on(self, device) -> torch.Tensor | None:
        if self.columns is None:
            return None
        cols = self._col_cache.get(device)
        if cols is None:
            cols = self._col_cache[device] = self.columns.to(device)
        return cols


def _has_config(module: nn.Module) -> bool:
    return getattr(getattr(module, "config", None), "model_type", None) is not None


def _inner_model(model: nn.Module) -> tuple[str, nn.Module]:
    """(path, module) of the model whose config describes ``model``: itself when it has one,
    else the one outermost submodule that has a ``config`` with a ``model_type`` (an HF model
    held by a wrapper). With none, or several side by side, ``model`` itself."""
    if _has_config(model):
        return "", model
    found: list[tuple[str, nn.Module]] = []
    for path, mod in model.named_modules():
        if path and _has_config(mod) and not any(path.startswith(p + ".") for p, _ in found):
            found.append((path, mod))
    if len(found) == 1:
        return found[0]
    return "", model


def _cfg_get(config, names, default=None):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def _leaf(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def _linear_dims(module: nn.Module) -> tuple[int | None, int | None]:
    """(in_features, out_features) of a Linear, a GPT-2 Conv1D, or similar."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
        return module.weight.shape[0], module.nf
    if isinstance(module, nn.Embedding):
        return None, module.embedding_dim
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return weight.shape[1], weight.shape[0]
    return None, None


class ModelLayout:
    """What introspection found on one model: layer stacks, roles inside a layer, head geometry."""

    def __init__(self, model: nn.Module):
        self.model = model
        # A user's wrapper (an nn.Module holding an HF model as an attribute) has no config
        # of its own: the layout is read from the one HF model inside it, so every component
        # resolves as on that model (family overrides, widths, heads, the embedding).
        self.inner_path, self.inner = _inner_model(model)
        self.config = getattr(self.inner, "config", None)
        self.model_type = getattr(self.config, "model_type", None)
        self.overrides = fam.FAMILY_OVERRIDES.get(self.model_type, {})
        self.modules = dict(model.named_modules())
        self.stacks = self._find_stacks()
        cfg = self.config
        self.hidden = _cfg_get(cfg, fam.HIDDEN) if cfg is not None else None
        self.n_heads = _cfg_get(cfg, fam.N_HEADS) if cfg is not None else None
        self.n_kv_heads = _cfg_get(cfg, fam.N_KV_HEADS, None) if cfg is not None else None
        if "n_kv_heads" in self.overrides:
            self.n_kv_heads = self.overrides["n_kv_heads"](cfg)
        if self.n_kv_heads is None and self.n_heads is not None:
            self.n_kv_heads = 1 if getattr(cfg, "multi_query", False) else self.n_heads
        head_dim = _cfg_get(cfg, fam.HEAD_DIM) if cfg is not None else None
        if head_dim is None and self.hidden and self.n_heads:
            head_dim = self.hidden // self.n_heads
        self.head_dim = head_dim
        self._roles: dict[str, dict[str, str | tuple]] = {}

    # -- layer stacks -------------------------------------------------------------------
    def _find_stacks(self) -> dict[str, tuple[str, nn.ModuleList]]:
        lists = [
            (path, mod)
            for path, mod in self.modules.items()
            if isinstance(mod, nn.ModuleList)
            and len(mod) > 0
            and len({type(m) for m in mod}) == 1
            and any(True for _ in mod[0].parameters())
        ]
        # Drop lists nested inside another candidate (MoE experts inside a layer).
        lists = [
            (p, m)
            for p, m in lists
            if not any(q != p and (q == "" or p.startswith(q + ".")) for q, _ in lists)
        ]
        n_layers = _cfg_get(self.config, fam.N_LAYERS) if self.config is not None else None
        if n_layers is not None:
            matching = [(p, m) for p, m in lists if len(m) == n_layers]
            n_dec = getattr(self.config, "num_decoder_layers", None)
            if n_dec is not None:
                matching += [(p, m) for p, m in lists if len(m) == n_dec and (p, m) not in matching]
            if matching:
                lists = matching
        if len(lists) > 1:
            named = [(p, m) for p, m in lists if _leaf(p) in fam.STACK_NAMES]
            if named:
                lists = named
        stacks: dict[str, tuple[str, nn.ModuleList]] = {}
        if len(lists) == 1:
            stacks[""] = lists[0]
        else:
            for path, mod in lists:
                first = path.split(".")[0] if "." in path else path
                for tag in ("encoder", "decoder"):
                    if tag in path.split("."):
                        first = tag
                stacks[first] = (path, mod)
        return stacks

    def stack(self, name: str, component: str) -> tuple[str, nn.ModuleList]:
        if not self.stacks:
            raise SiteError(
                f"component {component!r}: found no list of layers in {type(self.model).__name__}; "
                f"address modules by path instead, e.g. component='encoder.layers.0.output'"
            )
        if name == "":
            if "" in self.stacks:
                return self.stacks[""]
            raise SiteError(
                f"component {component!r}: {type(self.model).__name__} has several layer stacks "
                f"({accepted(sorted(self.stacks))}); prefix the component with one, e.g. "
                f"{sorted(self.stacks)[0] + '.' + component!r}"
            )
        if name not in self.stacks:
            raise SiteError(
                f"component prefix {name!r} is not a layer stack of {type(self.model).__name__}; "
                f"accepted: {accepted(sorted(s for s in self.stacks if s))}"
            )
        return self.stacks[name]

    # -- roles inside a layer -------------------------------------------------------------
    def roles(self, stack_name: str) -> dict:
        if stack_name in self._roles:
            return self._roles[stack_name]
        _, layers = self.stacks[stack_name]
        layer = layers[0]
        named = [(p, m) for p, m in layer.named_modules() if p]
        roles: dict = {}

        def first(names, within="", outside=None):
            for p, _m in named:
                if within and not p.startswith(within + "."):
                    continue
                if outside and (p == outside or p.startswith(outside + ".")):
                    continue
                if _leaf(p) in names:
                    return p
            return None

        qkv = first(fam.QKV_NAMES)
        q = first(fam.Q_NAMES)
        # The attention module is the closest ancestor of the query projection that also
        # holds an output projection.
        anchor = q or qkv
        if anchor is not None:
            parts = anchor.split(".")[:-1]
            while True:
                within = ".".join(parts)
                o = None
                for p, _m in named:
                    if within and not p.startswith(within + "."):
                        continue
                    if _leaf(p) in fam.O_NAMES and p != anchor and _linear_dims(_m)[0] is not None:
                        o = p
                        break
                if o is not None or not parts:
                    break
                parts.pop()
            if o is not None:
                roles["attn"] = within
                roles["o"] = o
            if q is not None and (qkv is None or len(q) <= len(qkv)):
                roles["q"] = q
                scope = q.rsplit(".", 1)[0] if "." in q else ""
                k = first(fam.K_NAMES, scope)
                v = first(fam.V_NAMES, scope)
                if k:
                    roles["k"] = k
                if v:
                    roles["v"] = v
            else:
                roles["qkv"] = qkv
        attn = roles.get("attn")
        mlp = first(fam.MLP_NAMES, outside=attn)
        act = None
        if mlp is not None:
            roles["mlp"] = mlp
            act = first(fam.ACT_NAMES, mlp)
        else:
            # Projections held by the layer itself (OPT): input of up, output of down.
            up = first(fam.UP_NAMES, outside=attn)
            down = first(fam.DOWN_NAMES, outside=attn)
            if up is not None and down is not None:
                roles["mlp"] = (up, down)
                act = first(fam.ACT_NAMES, outside=attn)
        if act is not None and "experts" in act.split("."):
            # Mixture of experts: the activation runs once per expert on routed tokens only.
            roles["act_missing"] = "in a mixture-of-experts MLP the activation runs per expert on routed tokens"
        elif act is not None:
            roles["act"] = act
        roles.update(self.overrides.get("roles", {}))
        self._roles[stack_name] = roles
        return roles

    def qkv_columns(self, part: str, fused: nn.Module, path: str) -> torch.Tensor:
        n_h, n_kv, hd = self.n_heads, self.n_kv_heads, self.head_dim
        if not (n_h and n_kv and hd):
            raise SiteError(
                f"{path} is a fused query/key/value projection, but the model config does not give "
                f"the number of heads and head_dim needed to split it"
            )
        layout = self.overrides.get("qkv_layout", "contiguous")
        if callable(layout):
            layout = layout(self.config)
        out = _linear_dims(fused)[1]
        ar = torch.arange(hd)
        if layout == "contiguous":
            sizes = {"q": n_h * hd, "k": n_kv * hd, "v": n_kv * hd}
            expected = sizes["q"] + sizes["k"] + sizes["v"]
            start = {"q": 0, "k": sizes["q"], "v": sizes["q"] + sizes["k"]}[part]
            cols = torch.arange(start, start + sizes[part])
        elif layout == "per_head":
            expected = 3 * n_h * hd
            offset = {"q": 0, "k": 1, "v": 2}[part]
            cols = (torch.arange(n_h)[:, None] * 3 + offset) * hd + ar
        elif layout == "grouped":
            per = n_h // n_kv
            expected = n_kv * (per + 2) * hd
            groups = torch.arange(n_kv)[:, None] * (per + 2)
            if part == "q":
                slots = groups + torch.arange(per)  # [kv, per]
            else:
                slots = groups + per + (0 if part == "k" else 1)
            cols = slots.reshape(-1, 1) * hd + ar
        else:  # pragma: no cover - data error
            raise SiteError(f"unknown qkv_layout {layout!r} for {self.model_type}")
        if out is not None and out != expected:
            raise SiteError(
                f"{path}: fused projection has {out} output features but the {layout} layout with "
                f"{n_h} heads, {n_kv} key/value heads and head_dim {hd} needs {expected}"
            )
        return cols.reshape(-1)


def _parse_component(component: str) -> tuple[str, str]:
    """Split an optional stack prefix: 'decoder.block_output' -> ('decoder', 'block_output')."""
    if "." in component:
        prefix, _, name = component.rpartition(".")
        if name in COMPONENTS and "." not in prefix:
            return prefix, name
    return "", component


_BRACKET = re.compile(r"\[(\d+)\]")


def resolve_raw_path(model: nn.Module, component: str, layer: int) -> Site:
    path = component.replace("{layer}", str(layer)).replace("%s", str(layer)).replace("%d", str(layer))
    path = _BRACKET.sub(r".\1", path)
    if path.endswith(".input"):
        io, mod_path = "input", path[: -len(".input")]
    elif path.endswith(".output"):
        io, mod_path = "output", path[: -len(".output")]
    else:
        raise SiteError(
            f"component {component!r} is neither a known component ({accepted(COMPONENTS)}) nor a "
            f"module path ending in '.input' or '.output'.{did_you_mean(component, COMPONENTS)}"
        )
    mods = dict(model.named_modules())
    if mod_path not in mods:
        raise SiteError(
            f"component {component!r}: module path {mod_path!r} does not exist in "
            f"{type(model).__name__}.{did_you_mean(mod_path, [p for p in mods if p])}"
        )
    module = mods[mod_path]
    dims = _linear_dims(module)
    width = dims[0] if io == "input" else dims[1]
    return Site(module, mod_path, io, width=width, description=f"{mod_path} ({io})")


def _config_expression(config, expr: str):
    """``"d_model"``, ``"d_model/num_heads"``, ``"n_embd*4"`` evaluated on ``config`` (None if an
    attribute is missing)."""
    value = None
    for op, term in re.findall(r"(^|[*/])\s*([A-Za-z_][A-Za-z0-9_]*|\d+)\s*", expr):
        v = int(term) if term.isdigit() else getattr(config, term, None)
        if not isinstance(v, int):
            return None
        value = v if not op else value * v if op == "*" else value // v
    return value


def user_site(layout: ModelLayout, layer: int, component: str) -> Site | None:
    """The site of a component declared in ``families.type_to_module_mapping`` for this model's
    class (or the HF model inside a wrapper), else None."""
    for model in (layout.model, layout.inner):
        spec = fam.type_to_module_mapping.get(type(model), {}).get(component)
        if spec is not None:
            break
    else:
        return None
    if not (isinstance(spec, (tuple, list)) and len(spec) >= 2 and isinstance(spec[0], str)):
        raise SiteError(f"type_to_module_mapping[{type(model).__name__}][{component!r}]: expected (module path, "
                        f"hook kind), got {spec!r}")
    if spec[1] not in (fam.CONST_INPUT_HOOK, fam.CONST_OUTPUT_HOOK):
        raise SiteError(f"type_to_module_mapping[{type(model).__name__}][{component!r}]: hook kind {spec[1]!r}; "
                        f"accepted: {fam.CONST_INPUT_HOOK!r} (input), {fam.CONST_OUTPUT_HOOK!r} (output)")
    io = "input" if spec[1] == fam.CONST_INPUT_HOOK else "output"
    prefix = f"{layout.inner_path}." if model is layout.inner and layout.inner_path else ""
    site = resolve_raw_path(layout.model, f"{prefix}{spec[0]}.{io}", layer)
    dims = fam.type_to_dimension_mapping.get(type(model), {}).get(component, ())
    cfg = getattr(model, "config", None)
    for expr in (dims if isinstance(dims, (tuple, list)) else (dims,)):
        width = _config_expression(cfg, expr) if cfg is not None and isinstance(expr, str) else None
        if width is not None:
            site.width = width
            break
    if site.width is None:
        site.width = layout.hidden
    return site


def family_site(layout: ModelLayout, layer: int, component: str) -> Site | None:
    """The site of a component of the model's own family (``families.FAMILY_COMPONENTS``), else None."""
    stack_name, name = (component.rpartition(".")[0], component.rpartition(".")[2]) if "." in component \
        else ("", component)
    spec = fam.FAMILY_COMPONENTS.get(layout.model_type, {}).get(name)
    if spec is None:
        return None
    rel, io, third = spec
    stack_path, layers = layout.stack(stack_name, component)
    if layer >= len(layers):
        raise SiteError(f"layer {layer} is out of range for {type(layout.model).__name__}: it has {len(layers)} "
                        f"layers (accepted: 0..{len(layers) - 1})")
    layer_path = f"{stack_path}.{layer}" if stack_path else str(layer)
    module = layers[layer].get_submodule(rel) if rel else layers[layer]
    path = f"{layer_path}.{rel}" if rel else layer_path
    dims = _linear_dims(module)
    width = (dims[0] if io == "input" else dims[1]) if rel in ("x2h", "h2h") else layout.hidden
    columns = None
    if third is not None:
        width = width // 3
        columns = torch.arange(third * width, (third + 1) * width)
    return Site(module, path, io, width=width, columns=columns,
                description=f"{path} ({io}{', part ' + str(third) + ' of 3' if third is not None else ''})")


def resolve_site(layout: ModelLayout, layer: int, component: str, unit: str) -> Site:
    site = user_site(layout, layer, component) or family_site(layout, layer, component)
    if site is not None:
        if unit in HEAD_UNITS:
            raise SiteError(f"unit {unit!r}: component {component!r} comes from type_to_module_mapping, which "
                            f"declares no head geometry; use unit 'pos'")
        return site
    stack_name, name = _parse_component(component)
    if name not in COMPONENTS:
        looks_like_path = "." in component or "[" in component
        if looks_like_path:
            site = resolve_raw_path(layout.model, component, layer)
            if unit in HEAD_UNITS:
                raise SiteError(
                    f"unit {unit!r} needs a named head component (e.g. 'head_attention_value_output'); "
                    f"a raw module path {component!r} has no head geometry"
                )
            return site
        raise SiteError(
            f"component {component!r} is not known; accepted: {accepted(COMPONENTS)}, a stack prefix "
            f"such as 'decoder.block_output', or a module path ending in '.input'/'.output'."
            f"{did_you_mean(component, COMPONENTS)}"
        )
    is_head = name in HEAD_COMPONENTS
    role, io, head_kind = (HEAD_COMPONENTS if is_head else BASE_COMPONENTS)[name]
    if unit in HEAD_UNITS and not is_head:
        hint = f" use 'head_{name}'" if "head_" + name in HEAD_COMPONENTS else " only head_* components split into heads"
        raise SiteError(f"unit {unit!r} addresses heads, but component {component!r} has no heads;{hint}")
    if is_head and unit not in HEAD_UNITS:
        raise SiteError(
            f"component {component!r} splits into heads and needs unit 'h' or 'h.pos', got unit {unit!r}"
        )

    model = layout.model
    if role == "embed":
        _check_embedding_layer(layout, stack_name, component, layer)
        if stack_name or len(layout.stacks) > 1:
            # Encoder-decoder: each stack has its own embedding module (T5's shared
            # embedding is never called itself).
            stack_path, _ = layout.stack(stack_name, component)
            parent_path = stack_path.rpartition(".")[0]
            parent = model.get_submodule(parent_path)
            emb = next((m for m in parent.children() if isinstance(m, nn.Embedding)), None)
            if emb is None:
                raise SiteError(f"component {component!r}: found no embedding module in {parent_path!r}")
            path = next(p for p, m in parent.named_children() if m is emb)
            path = f"{parent_path}.{path}" if parent_path else path
            return Site(emb, path, "output", width=emb.embedding_dim, description=f"{path} (output)")
        getter = getattr(layout.inner, "get_input_embeddings", None)
        try:
            emb = getter() if callable(getter) else None
        except NotImplementedError:
            emb = None
        if not isinstance(emb, nn.Module) or not any(emb is m for m in layout.modules.values()):
            raise SiteError(
                f"component 'embedding_output': {type(model).__name__} has no get_input_embeddings(); "
                f"use a module path such as 'embed.output'"
            )
        path = next(p for p, m in layout.modules.items() if m is emb)
        return Site(emb, path, "output", width=_linear_dims(emb)[1], description=f"{path} (output)")

    stack_path, layers = layout.stack(stack_name, component)
    if layer >= len(layers):
        where = f" in stack {stack_name!r}" if stack_name else ""
        raise SiteError(
            f"layer {layer} is out of range for {type(model).__name__}{where}: it has {len(layers)} "
            f"layers (accepted: 0..{len(layers) - 1})"
        )
    layer_mod = layers[layer]
    layer_path = f"{stack_path}.{layer}" if stack_path else str(layer)
    if any(layer_mod is m for i, m in enumerate(layers) if i != layer):
        raise SiteError(
            f"layer {layer} of {type(model).__name__} is a module shared with other layers; hooks "
            f"cannot tell the layers apart"
        )
    if role == "layer":
        width = layout.hidden if layout.hidden is not None else _infer_width(layer_mod, io)
        return Site(layer_mod, layer_path, io, width=width, description=f"{layer_path} ({io})")

    roles = layout.roles(stack_name)
    rel = roles.get(role)
    if role in ("q", "k", "v") and rel is None and "qkv" in roles:
        return _fused_site(layout, roles["qkv"], layer_mod, layer_path, role, unit, head_kind)
    if isinstance(rel, tuple):
        # (input side, output side): the module read by input components, the module whose
        # output is the contribution (see families.py).
        rel = rel[0] if io == "input" else rel[1]
    check = layout.overrides.get("check")
    why_not = check(layout.config, role) if check is not None and layout.config is not None else None
    if why_not:
        raise SiteError(f"component {component!r} on {layout.model_type}: {why_not}")
    if rel is None:
        family = layout.model_type or type(model).__name__
        why = roles.get(f"{role}_missing")
        raise SiteError(
            f"component {component!r}: could not find the {role!r} module inside layer {layer_path} of "
            f"{family}{' (' + why + ')' if why else ''}; address it by module path, e.g. "
            f"component='{layer_path}.<submodule>.{io}'"
        )
    path = f"{layer_path}.{rel}"
    module = layer_mod.get_submodule(rel)
    if role == "act" and any(module is m for m in layers[0].modules()) and layer != 0:
        raise SiteError(
            f"component {component!r}: the activation module {path} is shared between layers; hook "
            f"it by a per-layer module path instead"
        )
    dims = _linear_dims(module)
    width = dims[0] if io == "input" else dims[1]
    if role in ("attn", "mlp"):
        width = layout.hidden if layout.hidden is not None else _infer_width(module, io)
    if role == "act" and width is None:
        # An activation has no weights: its width is that of the up projection feeding it, the
        # first linear map of the module that holds it (GPT-2's c_fc, Llama's gate_proj, ff1).
        # When the activation sits in the layer itself (OPT's activation_fn), the attention's
        # projections come first: they are not what feeds it.
        # A fused gate-and-up projection (Phi-3's gate_up_proj) holds two halves; the activation
        # sees one.
        parent = layer_mod.get_submodule(rel.rpartition(".")[0]) if "." in rel else layer_mod
        width = next((d[1] // 2 if "gate_up" in name else d[1] for name, m in parent.named_modules()
                      if not _in_attention(name) for d in [_linear_dims(m)]
                      if d[0] is not None and d[1] is not None), None)
    site = Site(module, path, io, width=width, description=f"{path} ({io})")
    if head_kind is not None:
        _set_heads(layout, site, head_kind, component)
    return site


def _check_embedding_layer(layout, stack_name, component: str, layer: int) -> None:
    """The embedding sits before every layer, so any layer of the stack names it; a layer past
    the stack is a mistake, refused as for any other component."""
    try:
        _, layers = layout.stack(stack_name, component)
    except SiteError:  # no layer stack found: nothing to compare with
        return
    if layer >= len(layers):
        where = f" in stack {stack_name!r}" if stack_name else ""
        raise SiteError(
            f"layer {layer} is out of range for {type(layout.model).__name__}{where}: it has "
            f"{len(layers)} layers (accepted: 0..{len(layers) - 1}; component {component!r} is the "
            f"same site at every layer)"
        )


def _in_attention(name: str) -> bool:
    """Whether a submodule path lies inside an attention block (``self_attn.k_proj``, ...)."""
    return any(part in name.lower() for part in ("attn", "attention"))


def _infer_width(module: nn.Module, io: str) -> int | None:
    """Width of a plain module's input (its first linear map) or output (its last one)."""
    dims = [d for d in (_linear_dims(m) for m in module.modules()) if d[1] is not None]
    if not dims:
        return None
    return dims[0][0] if io == "input" else dims[-1][1]


def _set_heads(layout: ModelLayout, site: Site, head_kind: str, component: str) -> None:
    n = layout.n_heads if head_kind == "q" else layout.n_kv_heads
    if not n or site.width is None:
        return
    site.n_heads = n
    site.head_dim = site.width // n
    if site.head_dim * n != site.width:
        raise SiteError(f"component {component!r}: width {site.width} does not split into {n} heads")


def _fused_site(layout, rel, layer_mod, layer_path, role, unit, head_kind) -> Site:
    path = f"{layer_path}.{rel}"
    module = layer_mod.get_submodule(rel)
    cols = layout.qkv_columns(role, module, path)
    site = Site(module, path, "output", width=int(cols.numel()), columns=cols,
                description=f"{path} (output, {role} part)")
    _set_heads(layout, site, head_kind, f"{role} of {path}")
    return site
