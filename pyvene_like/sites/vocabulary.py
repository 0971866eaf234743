"""The component vocabulary: what each name means, independent of any model family."""

from __future__ import annotations

# component -> (role of the module to hook, "input"|"output", which heads split it)
# Roles are found on each model by introspection (see resolve.py):
#   layer  the decoder/encoder block          attn  the attention module
#   q/k/v  the query/key/value projections    o     the attention output projection
#   mlp    the feed-forward module            act   the MLP activation module
#   embed  the input embedding
BASE_COMPONENTS: dict[str, tuple[str, str, str | None]] = {
    "block_input": ("layer", "input", None),
    "block_output": ("layer", "output", None),
    "attention_input": ("attn", "input", None),
    "attention_output": ("attn", "output", None),
    "attention_value_output": ("o", "input", "q"),
    "query_output": ("q", "output", "q"),
    "key_output": ("k", "output", "kv"),
    "value_output": ("v", "output", "kv"),
    "mlp_input": ("mlp", "input", None),
    "mlp_activation": ("act", "output", None),
    "mlp_output": ("mlp", "output", None),
    "embedding_output": ("embed", "output", None),
}

HEAD_COMPONENTS = {
    "head_" + name: spec for name, spec in BASE_COMPONENTS.items() if spec[2] is not None
}

COMPONENTS: tuple[str, ...] = tuple(BASE_COMPONENTS) + tuple(HEAD_COMPONENTS)
HEAD_UNITS = ("h", "h.pos")
