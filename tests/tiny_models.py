"""Tiny, randomly initialised HF models for architecture-coverage tests.

Everything is built from transformers config classes (no Hub download).
Models are float32, in eval mode, and use ``attn_implementation="eager"``.

Usage::

    from tests.tiny_models import FAMILIES, build_tiny_model, example_inputs
    model = build_tiny_model("llama")
    out = model(**example_inputs("llama"))
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import transformers
from torch import nn

VOCAB = 128
MAX_POS = 128


def _cfg_gpt2():
    return transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=MAX_POS, n_embd=32, n_layer=2, n_head=4,
        n_inner=64, bos_token_id=0, eos_token_id=0,
    ), transformers.GPT2LMHeadModel


def _cfg_gpt_neo():
    return transformers.GPTNeoConfig(
        vocab_size=VOCAB, max_position_embeddings=MAX_POS, hidden_size=32, num_layers=2,
        attention_types=[[["global", "local"], 1]], num_heads=4, intermediate_size=64,
        window_size=16, bos_token_id=0, eos_token_id=0,
    ), transformers.GPTNeoForCausalLM


def _cfg_gpt_neox():
    return transformers.GPTNeoXConfig(
        vocab_size=VOCAB, max_position_embeddings=MAX_POS, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64, rotary_pct=0.5,
        bos_token_id=0, eos_token_id=0,
    ), transformers.GPTNeoXForCausalLM


def _cfg_gptj():
    return transformers.GPTJConfig(
        vocab_size=VOCAB, n_positions=MAX_POS, n_embd=32, n_layer=2, n_head=4,
        n_inner=64, rotary_dim=4, bos_token_id=0, eos_token_id=0,
    ), transformers.GPTJForCausalLM


def _cfg_llama():
    return transformers.LlamaConfig(
        vocab_size=VOCAB, max_position_embeddings=MAX_POS, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    ), transformers.LlamaForCausalLM


def _cfg_mistral():
    return transformers.MistralConfig(
        vocab_size=VOCAB, max_position_embeddings=MAX_POS, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, sliding_window=None,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    ), transformers.MistralForCausalLM


def _cfg_mixtral():
    return transformers.MixtralConfig(
        vocab_size=VOCAB, max_position_embeddings=MAX_POS, hidden_size=32, intermediate_size=48,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, sliding_window=None,
        num_local_experts=4, num_experts_per_tok=2,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    ), transformers.MixtralForCausalLM


def _cfg_gemma():
    # head_dim (16) != hidden_size / num_attention_heads (32 / 4 = 8)
    return transformers.GemmaConfig(
        vocab_size=VOCAB, max_position_embeddings=MAX_POS, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    ), transformers.GemmaForCausalLM


def _cfg_gemma2():
    return transformers.Gemma2Config(
        vocab_size=VOCAB, max_position_embeddings=MAX_POS, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        sliding_window=16, query_pre_attn_scalar=8,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    ), transformers.Gemma2ForCausalLM


def _cfg_qwen2():
    return transformers.Qwen2Config(
        vocab_size=VOCAB, max_position_embeddings=MAX_POS, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        use_sliding_window=False, bos_token_id=0, eos_token_id=0, pad_token_id=0,
    ), transformers.Qwen2ForCausalLM


def _cfg_qwen3():
    # head_dim (16) != hidden_size / num_attention_heads (32 / 4 = 8)
    return transformers.Qwen3Config(
        vocab_size=VOCAB, max_position_embeddings=MAX_POS, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        use_sliding_window=False, bos_token_id=0, eos_token_id=0, pad_token_id=0,
    ), transformers.Qwen3ForCausalLM


def _cfg_phi3():
    return transformers.Phi3Config(
        vocab_size=VOCAB, max_position_embeddings=MAX_POS, original_max_position_embeddings=MAX_POS,
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, sliding_window=None,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    ), transformers.Phi3ForCausalLM


def _cfg_opt():
    return transformers.OPTConfig(
        vocab_size=VOCAB, max_position_embeddings=MAX_POS, hidden_size=32, num_hidden_layers=2,
        ffn_dim=64, num_attention_heads=4, word_embed_proj_dim=32,
        bos_token_id=0, eos_token_id=0, pad_token_id=1,
    ), transformers.OPTForCausalLM


def _cfg_falcon():
    # Defaults of FalconConfig: new_decoder_architecture=False, multi_query=True,
    # parallel_attn=True, alibi=False, bias=False.
    return transformers.FalconConfig(
        vocab_size=VOCAB, max_position_embeddings=MAX_POS, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, bos_token_id=0, eos_token_id=0,
    ), transformers.FalconForCausalLM


def _cfg_bloom():
    return transformers.BloomConfig(
        vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    ), transformers.BloomForCausalLM


def _cfg_bert():
    return transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=MAX_POS, pad_token_id=0,
    ), transformers.BertModel


def _cfg_t5():
    return transformers.T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
        num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=32,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    ), transformers.T5ForConditionalGeneration


_BUILDERS: dict[str, Callable[[], tuple[transformers.PretrainedConfig, type]]] = {
    "gpt2": _cfg_gpt2,
    "gpt_neo": _cfg_gpt_neo,
    "gpt_neox": _cfg_gpt_neox,
    "gptj": _cfg_gptj,
    "llama": _cfg_llama,
    "mistral": _cfg_mistral,
    "mixtral": _cfg_mixtral,
    "gemma": _cfg_gemma,
    "gemma2": _cfg_gemma2,
    "qwen2": _cfg_qwen2,
    "qwen3": _cfg_qwen3,
    "phi3": _cfg_phi3,
    "opt": _cfg_opt,
    "falcon": _cfg_falcon,
    "bloom": _cfg_bloom,
    "bert": _cfg_bert,
    "t5": _cfg_t5,
}

FAMILIES = list(_BUILDERS)


def tiny_config(family: str) -> transformers.PretrainedConfig:
    """Return the (fresh) config object used for ``family``."""
    if family not in _BUILDERS:
        raise KeyError(f"unknown family {family!r}; known: {FAMILIES}")
    cfg, _ = _BUILDERS[family]()
    return cfg


def build_tiny_model(family: str, seed: int = 0) -> torch.nn.Module:
    """Build a tiny random model of ``family`` (float32, eval mode, eager attention)."""
    if family not in _BUILDERS:
        raise KeyError(f"unknown family {family!r}; known: {FAMILIES}")
    cfg, cls = _BUILDERS[family]()
    torch.manual_seed(seed)
    # Model ``__init__`` does not accept ``attn_implementation`` in transformers 5.x;
    # ``_from_config`` does (it sets ``config._attn_implementation`` before building).
    model = cls._from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    model = model.to(torch.float32)
    model.eval()
    return model


def example_inputs(family: str, batch: int = 2, seq: int = 8, seed: int = 0) -> dict:
    """Deterministic forward kwargs for ``family`` (token ids avoid special ids 0/1)."""
    if family not in _BUILDERS:
        raise KeyError(f"unknown family {family!r}; known: {FAMILIES}")
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, VOCAB, (batch, seq), generator=g)
    kwargs = {"input_ids": input_ids, "attention_mask": torch.ones(batch, seq, dtype=torch.long)}
    if family == "t5":
        kwargs["decoder_input_ids"] = torch.randint(2, VOCAB, (batch, seq), generator=g)
    return kwargs


__all__ = ["FAMILIES", "build_tiny_model", "example_inputs", "tiny_config"]


def train_bpe_tokenizer(corpus, vocab_size: int = 400):
    """A tiny byte-level BPE tokenizer (GPT-2 style leading-space tokens), trained offline on
    ``corpus``; ``<|endoftext|>`` is its EOS and pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


# -- a plain torch model (no HF config) ------------------------------------------------
class MLP(nn.Module):
    """A seeded ReLU MLP with a 2-way head: ``layers.<i>`` are the sites; the same weights for a
    seed in every process (the multi-process tests build it on each rank)."""

    def __init__(self, d_in=16, h=16, n_layer=2, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        dims = [d_in] + [h] * n_layer
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(a, b), nn.ReLU()) for a, b in zip(dims[:-1], dims[1:]))
        self.head = nn.Linear(h, 2)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.in_features**0.5)
                    m.bias.zero_()

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(x)
