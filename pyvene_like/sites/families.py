"""Per-family data, only where introspection of the module tree cannot decide.

Each row is keyed by ``config.model_type``. Keys:

* ``qkv_layout``: how a fused QKV projection orders its output features —
  ``"contiguous"`` ([q | k | v], GPT-2, Phi-3), ``"per_head"`` ([q_h k_h v_h] for each head,
  GPT-NeoX, Bloom), ``"grouped"`` (per KV group: its queries, then k, then v; Falcon's new
  decoder architecture), or a function of the config returning one of these.
* ``n_kv_heads``: a function of the config, where the config attribute misleads (Falcon).
* ``check``: a function of (config, role) returning why that role cannot be hooked on this
  configuration, or None.
* ``roles``: role -> module path inside a layer, for roles the generic search gets wrong.
  A pair ``(input side, output side)`` hooks the input of one module and the output of
  another, for families whose attention or MLP module does more than its own computation:

  - BERT-style models split the MLP over ``intermediate`` and ``output``, and their
    ``attention.output`` / ``output`` modules add the residual and layer-norm the sum, so
    ``attention_output`` and ``mlp_output`` are the outputs of the ``dense`` projections
    inside them (the contribution before dropout, residual add and LayerNorm);
  - Bloom's attention and MLP modules take the residual as an argument and return
    ``residual + contribution``, so their outputs are those of ``self_attention.dense`` and
    ``mlp.dense_4h_to_h``.

What every component means, family by family, is the table in ``tests/test_sites.py``.
"""

from __future__ import annotations


def _falcon_layout(config) -> str:
    if getattr(config, "new_decoder_architecture", False):
        return "grouped"
    if getattr(config, "multi_query", False):
        return "contiguous"
    return "per_head"


def _falcon_kv_heads(config) -> int:
    if getattr(config, "new_decoder_architecture", False):
        return config.num_kv_heads
    return 1 if getattr(config, "multi_query", False) else config.num_attention_heads


_BERT_LIKE = {
    "roles": {
        # attention_input: input of the attention module; attention_output: output of its
        # dense projection, before dropout, residual add and LayerNorm.
        "attn": ("attention", "attention.output.dense"),
        # mlp_input: input of intermediate (up projection + activation); mlp_output: output of
        # the down projection, before dropout, residual add and LayerNorm.
        "mlp": ("intermediate", "output.dense"),
        "act": "intermediate.intermediate_act_fn",
    }
}

def _bloom_check(config, role: str) -> str | None:
    if role in ("attn", "mlp", "o") and getattr(config, "pretraining_tp", 1) > 1 and getattr(
        config, "slow_but_exact", False
    ):
        return (
            f"with pretraining_tp={config.pretraining_tp} and slow_but_exact=True Bloom computes "
            f"its output projections from sliced weights without calling the projection modules, "
            f"so a hook there never runs; accepted: slow_but_exact=False (the default)"
        )
    return None


# Bloom's attention and MLP modules add the residual themselves (dropout_add inside).
_BLOOM = {
    "qkv_layout": "per_head",
    "check": _bloom_check,
    "roles": {
        "attn": ("self_attention", "self_attention.dense"),
        "mlp": ("mlp", "mlp.dense_4h_to_h"),
    },
}

FAMILY_OVERRIDES: dict[str, dict] = {
    "gpt_neox": {"qkv_layout": "per_head"},
    "bloom": _BLOOM,
    "falcon": {"qkv_layout": _falcon_layout, "n_kv_heads": _falcon_kv_heads},
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "electra": _BERT_LIKE,
    # pyvene's toy MLP (pyvene_like.compat.MLPConfig): each block is itself the MLP (ff1, act).
    "mlp": {"roles": {"act": "act"}},
}

# Components of their own, per model_type: name -> (module path inside one layer of the stack,
# "input" | "output", which third of the module's output, or None). Used where a family's
# layers are not transformer blocks, so the shared vocabulary does not describe them: pyvene's
# toy GRU (pyvene_like.compat.GRUConfig), whose "layer" is a cell called once per time step
# (address the steps with unit "t").
_GRU_GATES = {f"{gate}_gate_{io}": (f"{gate}_act", io, None)
              for gate in ("reset", "update", "new") for io in ("input", "output")}
_GRU_THIRDS = {f"{gate}_{proj}_output": (proj, "output", k)
               for proj in ("x2h", "h2h") for k, gate in enumerate(("reset", "update", "new"))}
FAMILY_COMPONENTS: dict[str, dict[str, tuple]] = {
    "gru": {"cell_input": ("", "input", None), "cell_output": ("", "output", None),
            "x2h_output": ("x2h", "output", None), "h2h_output": ("h2h", "output", None),
            **_GRU_GATES, **_GRU_THIRDS},
}

# Components declared by the user for a model class, pyvene's way (``pv.type_to_module_mapping``):
# ``{model class: {component: (module path, with %s for the layer, hook kind)}}``, the hook kind
# being CONST_INPUT_HOOK (the module's input) or CONST_OUTPUT_HOOK (its output). They are
# consulted before introspection, for that class only. Their widths, optional:
# ``type_to_dimension_mapping = {model class: {component: (config expression, ...)}}``, each
# expression a config attribute, optionally divided or multiplied by another or by an int
# ("d_model", "d_model/num_heads", "n_embd*4"); the first that evaluates is used.
CONST_INPUT_HOOK = "register_forward_pre_hook"
CONST_OUTPUT_HOOK = "register_forward_hook"
type_to_module_mapping: dict = {}
type_to_dimension_mapping: dict = {}

# Config attribute names, tried in order.
N_LAYERS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
HIDDEN = ("hidden_size", "n_embd", "d_model", "dim", "embed_dim")
N_HEADS = ("num_attention_heads", "n_head", "num_heads", "n_heads")
N_KV_HEADS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "multi_query_group_num")
HEAD_DIM = ("head_dim", "d_kv", "kv_channels")

# Leaf module names, by role, for the generic search inside a layer.
Q_NAMES = ("q_proj", "query", "q", "wq", "q_lin", "query_proj")
K_NAMES = ("k_proj", "key", "k", "wk", "k_lin", "key_proj")
V_NAMES = ("v_proj", "value", "v", "wv", "v_lin", "value_proj")
QKV_NAMES = ("c_attn", "query_key_value", "qkv_proj", "Wqkv", "qkv", "W_pack", "in_proj")
O_NAMES = ("o_proj", "out_proj", "c_proj", "dense", "o", "out_lin", "wo", "proj", "out", "Wo")
MLP_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe", "DenseReluDense", "moe", "mlp_block")
ACT_NAMES = ("act", "act_fn", "activation_fn", "activation", "intermediate_act_fn", "act_func", "gelu_impl", "gelu")
# MLP projections, for layers that hold them directly (OPT: fc1, activation_fn, fc2).
UP_NAMES = ("fc1", "c_fc", "dense_h_to_4h", "fc_in", "up_proj", "wi", "w1", "lin1")
DOWN_NAMES = ("fc2", "dense_4h_to_h", "fc_out", "down_proj", "wo", "w2", "lin2")
STACK_NAMES = ("layers", "h", "layer", "block", "blocks")
