"""pyvene's top-level helpers: vocabulary read-outs and model factories.

The factories return ``(config, tokenizer, model)`` as pyvene's do.

* Without ``config=`` they load by name with transformers' ``from_pretrained`` (the Hub
  cache and ``cache_dir`` are honoured; a name that cannot be loaded raises ``LoadError``).
* With ``config=`` they build a randomly initialised model of that shape and never touch
  the network: the tokenizer for ``name`` is loaded from the local cache only, and is
  ``None`` (with a ``PyveneLikeWarning``) when it is not cached. pyvene downloads the
  tokenizer in that case too; a random model is meant to run offline.

Differences from pyvene, on purpose: tokenizers are loaded with ``AutoTokenizer`` (the
same tokenizer for these repositories, and it also works for LLaMA repositories that
ship only ``tokenizer.json``); ``cache_dir`` is passed to the config and tokenizer too;
nothing is printed; ``embed_to_distrib`` works on any model with input embeddings (pyvene
supports GPT-2 only and needs ``config.architectures``, which random models lack) and
runs under ``no_grad`` rather than ``inference_mode``.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, LoadError, PyveneLikeWarning, ShapeError
from ..types import PathLike
from ..validation import check_bool, check_int
from .toy_models import (
    GRUConfig,
    GRUForClassification,
    GRULMHeadModel,
    GRUModel,
    MLPConfig,
    MLPForClassification,
)

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

#: What the factories return, as pyvene's do: ``(config, tokenizer, model)``.
Created = tuple[Any, Any, nn.Module]

__all__ = [
    "embed_to_distrib",
    "top_vals",
    "format_token",
    "GET_LOC",
    "set_seed",
    "count_parameters",
    "create_gpt2",
    "create_gpt2_lm",
    "create_gpt_neo",
    "create_llama",
    "create_mlp_classifier",
    "create_gru",
    "create_gru_lm",
    "create_gru_classifier",
]


# ------------------------------------------------------------------- vocabulary read-outs


def _embedding_matrix(model) -> torch.Tensor:
    wte = getattr(model, "wte", None)  # GPT2Model, as pyvene addresses it
    if wte is None:
        getter = getattr(model, "get_input_embeddings", None)
        wte = getter() if callable(getter) else None
    weight = getattr(wte, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise ConfigError(
            f"embed_to_distrib: model {type(model).__name__} has no input embedding matrix "
            f"(looked for model.wte and model.get_input_embeddings()); accepted: a model with "
            f"token embeddings, e.g. GPT2Model or GPT2LMHeadModel"
        )
    return weight


def embed_to_distrib(model: nn.Module, embed: torch.Tensor, log: bool = False, logits: bool = False) -> torch.Tensor:
    """Read a hidden state out through the input embedding matrix.

    ``embed @ W_E^T`` gives one score per vocabulary entry; with ``logits=True`` these
    scores are returned, otherwise their softmax over the vocabulary (``log_softmax`` with
    ``log=True``). ``embed`` is [batch, seq, hidden] as in pyvene; any leading shape works.
    """
    weight = _embedding_matrix(model)
    if not isinstance(embed, torch.Tensor) or not (embed.dtype.is_floating_point or embed.dtype.is_complex) \
            or embed.dim() == 0 or embed.shape[-1] != weight.shape[-1]:
        what = (f"a {embed.dtype} tensor of shape {list(embed.shape)}" if isinstance(embed, torch.Tensor)
                else f"{embed!r} ({type(embed).__name__})")
        raise ShapeError(
            f"embed_to_distrib: embed must be a floating-point tensor [..., {weight.shape[-1]}] (the "
            f"embedding width), got {what}"
        )
    check_bool(log, "embed_to_distrib: log")
    check_bool(logits, "embed_to_distrib: logits")
    with torch.no_grad():
        scores = torch.matmul(embed.to(weight.dtype), weight.t())
        if logits:
            return scores
        return torch.log_softmax(scores, dim=-1) if log else torch.softmax(scores, dim=-1)


def format_token(tokenizer: PreTrainedTokenizerBase, tok: int | torch.Tensor) -> str:
    """Decode one token id for display: spaces become ``_`` and newlines a literal ``\\n``."""
    return tokenizer.decode(tok).replace(" ", "_").replace("\n", "\\n")


def top_vals(tokenizer: PreTrainedTokenizerBase, res: torch.Tensor, n: int = 10,
             return_results: bool = False) -> list[tuple[str, float]] | None:
    """The ``n`` highest entries of a 1-D distribution over the vocabulary, highest first.

    Prints one ``token value`` line each (token padded to 20 characters), or with
    ``return_results=True`` prints nothing and returns ``[(token, value), ...]``.
    """
    values, indices = torch.topk(res, n)
    results = [(format_token(tokenizer, i.item()), v.item()) for v, i in zip(values, indices)]
    if return_results:
        return results
    for tok, value in results:
        print(f"{tok:<20} {value}")
    return None


def GET_LOC(LOC: Sequence[int], unit: str = "h.pos", batch_size: int = 1) -> list:  # noqa: N802 - pyvene's name
    """``(head, position)`` -> the nested unit locations that unit ``"h.pos"`` takes:
    ``[[[[head]] * batch_size, [[position]] * batch_size]]``."""
    if unit != "h.pos":
        raise ConfigError(f"GET_LOC: unit {unit!r} is not supported; accepted: 'h.pos'")
    head, pos = LOC[0], LOC[1]
    return [[[[head]] * batch_size, [[pos]] * batch_size]]


def set_seed(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (all devices)."""
    check_int(seed, "set_seed: seed", minimum=0, maximum=2**32 - 1)  # NumPy's range
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters that require gradients."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ------------------------------------------------------------------------------ factories


def _load(what: str, loader, name: str, **kwargs):
    try:
        return loader(name, **kwargs)
    except OSError as exc:
        raise LoadError(
            f"{what}: could not load {name!r} with from_pretrained ({exc}); accepted: a Hub name or "
            f"local path that is reachable or cached, or config=<a transformers config> to build "
            f"a random model offline"
        ) from exc


def _tokenizer(name: str | None, cache_dir, *, local_only: bool):
    from transformers import AutoTokenizer

    if name is None:
        return None
    if not local_only:
        return _load("tokenizer", AutoTokenizer.from_pretrained, name, cache_dir=cache_dir)
    try:
        return AutoTokenizer.from_pretrained(name, cache_dir=cache_dir, local_files_only=True)
    except (OSError, ValueError):
        warnings.warn(
            f"no cached tokenizer for {name!r}; the random model is returned with tokenizer None "
            f"(load it once with network access, or pass cache_dir=)",
            PyveneLikeWarning,
            stacklevel=3,
        )
        return None


def _eager(config) -> None:
    # pyvene's GPT-2 factories load eager attention (its GPT-2 tests compare against a
    # hand-written eager forward); its other factories keep transformers' default.
    try:
        config._attn_implementation = "eager"
    except (AttributeError, ValueError):  # pragma: no cover - configs without the field
        pass


def _factory(model_cls_name: str, name: str, config, cache_dir, tokenizer_name=None, eager: bool = False,
             **load_kwargs):
    import transformers

    model_cls = getattr(transformers, model_cls_name)
    config_cls = model_cls.config_class
    tok_name = tokenizer_name or name
    if config is None:
        config = _load("config", config_cls.from_pretrained, name, cache_dir=cache_dir)
        if eager:
            _eager(config)
        model = _load(model_cls_name, model_cls.from_pretrained, name, config=config,
                      cache_dir=cache_dir, **load_kwargs)
        tokenizer = _tokenizer(tok_name, cache_dir, local_only=False)
    else:
        if not isinstance(config, config_cls):
            raise ConfigError(
                f"config: expected a {config_cls.__name__} for {model_cls_name}, got "
                f"{type(config).__name__}"
            )
        if eager:
            _eager(config)
        model = model_cls(config)
        tokenizer = _tokenizer(tok_name, cache_dir, local_only=True)
    return config, tokenizer, model


def create_gpt2(name: str = "gpt2", cache_dir: PathLike | None = None,
                config: PretrainedConfig | None = None) -> Created:
    """GPT-2 base model (``GPT2Model``, eager attention): ``(config, tokenizer, model)``."""
    return _factory("GPT2Model", name, config, cache_dir, eager=True)


def create_gpt2_lm(name: str = "gpt2", config: PretrainedConfig | None = None,
                   cache_dir: PathLike | None = None) -> Created:
    """GPT-2 with its LM head (``GPT2LMHeadModel``, eager attention)."""
    return _factory("GPT2LMHeadModel", name, config, cache_dir, eager=True)


def create_gpt_neo(name: str = "roneneldan/TinyStories-33M", cache_dir: PathLike | None = None,
                   config: PretrainedConfig | None = None) -> Created:
    """GPT-Neo causal LM; the tokenizer is GPT-Neo's (``EleutherAI/gpt-neo-125M``), as in pyvene."""
    return _factory("GPTNeoForCausalLM", name, config, cache_dir, tokenizer_name="EleutherAI/gpt-neo-125M")


def create_llama(name: str = "sharpbai/alpaca-7b-merged", cache_dir: PathLike | None = None,
                 dtype: torch.dtype = torch.bfloat16, config: PretrainedConfig | None = None) -> Created:
    """LLaMA causal LM, loaded in ``dtype`` (bfloat16 by default, as pyvene); a random model
    built from ``config=`` keeps the default float32. Attention is transformers' default (SDPA),
    as in pyvene."""
    if config is None:
        return _factory("LlamaForCausalLM", name, None, cache_dir, dtype=dtype)
    return _factory("LlamaForCausalLM", name, config, cache_dir)


def _toy(model_cls, config_cls, config, tokenizer_name, cache_dir):
    if not isinstance(config, config_cls):
        raise ConfigError(
            f"config: expected a {config_cls.__name__} for {model_cls.__name__}, got {type(config).__name__}"
        )
    tokenizer = _tokenizer(tokenizer_name, cache_dir, local_only=False)
    return config, tokenizer, model_cls(config)


def create_mlp_classifier(config: MLPConfig, tokenizer_name: str | None = None, cache_dir: PathLike | None = None) -> Created:
    """A random ``MLPForClassification``; a tokenizer only when ``tokenizer_name`` is given."""
    return _toy(MLPForClassification, MLPConfig, config, tokenizer_name, cache_dir)


def create_gru(config: GRUConfig, tokenizer_name: str | None = None, cache_dir: PathLike | None = None) -> Created:
    """A random ``GRUModel``."""
    return _toy(GRUModel, GRUConfig, config, tokenizer_name, cache_dir)


def create_gru_lm(config: GRUConfig, tokenizer_name: str | None = None, cache_dir: PathLike | None = None) -> Created:
    """A random ``GRULMHeadModel``."""
    return _toy(GRULMHeadModel, GRUConfig, config, tokenizer_name, cache_dir)


def create_gru_classifier(config: GRUConfig, tokenizer_name: str | None = None, cache_dir: PathLike | None = None) -> Created:
    """A random ``GRUForClassification``."""
    return _toy(GRUForClassification, GRUConfig, config, tokenizer_name, cache_dir)
