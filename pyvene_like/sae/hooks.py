"""TransformerLens / SAELens hook names -> this library's (layer, component) sites.

SAEs are published with the TransformerLens hook they were trained on (SAELens's
``metadata.hook_name``, Gemma Scope's release names). Each maps onto a site that holds the same
activation in a HuggingFace model:

==============================  ===========================  ==========================================
hook name                       component                    what it is
==============================  ===========================  ==========================================
``blocks.L.hook_resid_pre``     ``block_input``              residual stream entering block L
``blocks.L.hook_resid_post``    ``block_output``             residual stream leaving block L
``blocks.L.hook_attn_out``      ``attention_output``         attention's contribution to the residual
``blocks.L.hook_mlp_out``       ``mlp_output``               the MLP's contribution to the residual
``blocks.L.attn.hook_z``        ``attention_value_output``   per-head attention values, heads
                                                             concatenated (the input of the output
                                                             projection; SAELens's ``hook_z`` SAEs
                                                             flatten heads the same way)
``blocks.L.mlp.hook_post``      ``mlp_activation``           MLP hidden activation
==============================  ===========================  ==========================================

TransformerLens can fold layer norms and centre weights when it loads a model; an SAE trained on
such a model sees activations that differ from the HuggingFace model's by those transformations
(for GPT-2, ``center_writing_weights`` shifts the residual stream by its mean). Load the SAE on
the model it was trained for.

OpenAI's GPT-2 SAE locations are named differently; :func:`openai_location_to_site` maps them.
"""

from __future__ import annotations

import re

from ..errors import ConfigError, accepted, did_you_mean

_HOOKS = {
    "hook_resid_pre": "block_input",
    "hook_resid_post": "block_output",
    "hook_attn_out": "attention_output",
    "hook_mlp_out": "mlp_output",
    "attn.hook_z": "attention_value_output",
    "mlp.hook_post": "mlp_activation",
}
_PATTERN = re.compile(r"^blocks\.(\d+)\.(.+)$")

# OpenAI sparse_autoencoder (GPT-2 small) locations. ``resid_post_attn`` (the residual stream
# between attention and MLP) is not the input or output of any module, so it has no site.
_OPENAI = {
    "resid_post_mlp": "block_output",
    "resid_delta_attn": "attention_output",
    "resid_delta_mlp": "mlp_output",
    "mlp_post_act": "mlp_activation",
}


def hook_to_site(hook_name: str) -> tuple[int, str]:
    """``"blocks.5.hook_resid_post"`` -> ``(5, "block_output")``."""
    match = _PATTERN.match(hook_name) if isinstance(hook_name, str) else None
    names = [f"blocks.L.{h}" for h in _HOOKS]
    if match is None:
        raise ConfigError(
            f"SAE hook name {hook_name!r} is not a per-layer TransformerLens hook; accepted: "
            f"{accepted(names)} (L a layer index)"
        )
    layer, hook = int(match.group(1)), match.group(2)
    if hook not in _HOOKS:
        extra = ""
        if hook in ("hook_resid_mid", "hook_mlp_in"):
            extra = (" (the residual stream between attention and MLP is not the input or output "
                     "of a module; hook it by module path if your model has one)")
        raise ConfigError(
            f"SAE hook name {hook_name!r}: hook {hook!r} has no site in this library{extra}; "
            f"accepted: {accepted(names)}.{did_you_mean(hook, _HOOKS)}"
        )
    return layer, _HOOKS[hook]


def openai_location_to_site(location: str, layer: int) -> tuple[int, str]:
    """An OpenAI ``sparse_autoencoder`` location (``"resid_post_mlp"``, ...) -> ``(layer, component)``."""
    if location not in _OPENAI:
        extra = " (the residual stream between attention and MLP has no module boundary)" \
            if location == "resid_post_attn" else ""
        raise ConfigError(
            f"OpenAI SAE location {location!r} has no site in this library{extra}; accepted: "
            f"{accepted(_OPENAI)}.{did_you_mean(str(location), _OPENAI)}"
        )
    return int(layer), _OPENAI[location]
