"""One sparse autoencoder module for the published SAE formats (SAELens, Gemma Scope, OpenAI).

Shapes follow SAELens: ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``,
``b_dec [d_in]`` and, for JumpReLU, ``threshold [d_sae]``. Encoding is

    x_n  = normalise(x)                       # per `normalize_activations`, stats kept
    pre  = (x_n - b_dec if apply_b_dec_to_input else x_n) @ W_enc + b_enc
    f    = relu(pre)                          # "relu"
         | relu(pre) * (pre > threshold)      # "jumprelu" (= pre * (pre > threshold) for threshold >= 0)
         | relu of the k largest pre, 0 elsewhere   # "topk"

and decoding ``x_hat = denormalise(f @ W_dec + b_dec)`` with the stats of the same input.
Normalisations (SAELens's ``normalize_activations``):

* ``"none"``;
* ``"expected_average_only_in"``: ``x * norm_scaling_factor`` in, ``/ norm_scaling_factor`` out
  (a dataset constant, sqrt(d_in) / E||x||; without one it is the identity, as in SAELens);
* ``"constant_norm_rescale"``: ``x * c`` in, ``/ c`` out with ``c = sqrt(d_in) / ||x||`` per row;
* ``"layer_norm"`` (OpenAI's TopK SAEs): ``(x - mu) / (std + eps)`` in, ``* std + mu`` out, with
  ``std`` the unbiased standard deviation over the last dimension.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, LoadError, ShapeError, accepted, did_you_mean
from ..validation import check_bool, check_fits_dtype, check_number, check_positive_int, is_int

ACTIVATIONS = ("relu", "jumprelu", "topk")
NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "float64": torch.float64}


def dtype_from_name(name: str | torch.dtype) -> torch.dtype:
    """``"float32"``, ``"torch.bfloat16"`` or a ``torch.dtype`` -> ``torch.dtype``."""
    if isinstance(name, torch.dtype):
        if name in _DTYPES.values():
            return name
        key = _dtype_name(name)
    else:
        key = str(name).removeprefix("torch.")
    if key not in _DTYPES:
        raise ConfigError(
            f"SAE dtype {name!r} is not supported; accepted: {accepted(_DTYPES)}.{did_you_mean(key, _DTYPES)}"
        )
    return _DTYPES[key]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class SAE(nn.Module):
    """A sparse autoencoder: ``encode``, ``decode`` and ``forward`` (the reconstruction).

    Build one empty (zero weights) from its settings, or with a loader
    (:func:`pyvene_like.sae.load_sae`). ``config()`` gives the JSON settings that rebuild it,
    so an intervention holding an SAE saves it as settings plus its state dict.
    """

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        activation: str = "relu",
        k: int | None = None,
        apply_b_dec_to_input: bool = True,
        normalize_activations: str = "none",
        norm_scaling_factor: float | None = None,
        layer_norm_eps: float = 1e-5,
        hook_name: str | None = None,
        dtype: str | torch.dtype = "float32",
    ):
        super().__init__()
        d_in = check_positive_int(d_in, "SAE d_in")
        d_sae = check_positive_int(d_sae, "SAE d_sae")
        for name, value in (("d_in", d_in), ("d_sae", d_sae)):
            if value >= 2**63:  # 10**30 passed the int check and overflowed raw in torch.zeros
                raise ConfigError(f"SAE {name} must be a positive int that fits in int64 (< 2**63), got {value!r}")
        if activation not in ACTIVATIONS:
            raise ConfigError(
                f"SAE activation {activation!r} is not supported; accepted: {accepted(ACTIVATIONS)}."
                f"{did_you_mean(str(activation), ACTIVATIONS)}"
            )
        if activation == "topk":
            if not is_int(k) or not 1 <= k <= d_sae:
                raise ConfigError(f"SAE activation 'topk' needs k, an int in 1..d_sae={d_sae}, got k={k!r}")
        elif k is not None:
            raise ConfigError(f"SAE k={k!r} is only used by activation 'topk', not {activation!r}")
        if normalize_activations not in NORMALIZATIONS:
            raise ConfigError(
                f"SAE normalize_activations {normalize_activations!r} is not supported; accepted: "
                f"{accepted(NORMALIZATIONS)}.{did_you_mean(str(normalize_activations), NORMALIZATIONS)}"
            )
        if norm_scaling_factor is not None:
            if normalize_activations != "expected_average_only_in":
                raise ConfigError(
                    f"SAE norm_scaling_factor={norm_scaling_factor!r} is only used with "
                    f"normalize_activations='expected_average_only_in', not {normalize_activations!r}"
                )
            norm_scaling_factor = check_fits_dtype(
                check_number(norm_scaling_factor, "SAE norm_scaling_factor", positive=True),
                "SAE norm_scaling_factor", dtype_from_name(dtype))
        if hook_name is not None and (not isinstance(hook_name, str) or not hook_name.strip()):
            blank = " (a blank name: give the hook's name, or None)" if isinstance(hook_name, str) else ""
            raise ConfigError(f"SAE hook_name must be a string or None, got {hook_name!r}{blank}")
        self.d_in, self.d_sae = d_in, d_sae
        self.activation = activation
        self.k = None if k is None else int(k)
        self.apply_b_dec_to_input = check_bool(apply_b_dec_to_input, "SAE apply_b_dec_to_input")
        self.normalize_activations = normalize_activations
        self.norm_scaling_factor = norm_scaling_factor
        self.layer_norm_eps = check_fits_dtype(check_number(layer_norm_eps, "SAE layer_norm_eps", positive=True),
                                               "SAE layer_norm_eps", dtype_from_name(dtype))
        self.hook_name = hook_name
        dtype = dtype_from_name(dtype)
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae, dtype=dtype))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, dtype=dtype))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(d_in, dtype=dtype))
        if activation == "jumprelu":
            self.threshold = nn.Parameter(torch.zeros(d_sae, dtype=dtype))
        else:
            self.threshold = None

    # -- settings ---------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    def config(self) -> dict[str, Any]:
        """The JSON settings that rebuild this SAE (weights not included)."""
        return {
            "d_in": self.d_in, "d_sae": self.d_sae, "activation": self.activation, "k": self.k,
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": self.normalize_activations,
            "norm_scaling_factor": self.norm_scaling_factor, "layer_norm_eps": self.layer_norm_eps,
            "hook_name": self.hook_name, "dtype": _dtype_name(self.dtype),
        }

    @classmethod
    def from_config(cls, config: dict) -> SAE:
        if not isinstance(config, dict):
            raise ConfigError(f"sae_config must be a dict of SAE settings (SAE.config()), got {config!r}")
        try:
            return cls(**config)
        except TypeError as e:
            raise ConfigError(f"sae_config {config!r} does not describe an SAE: {e}") from None

    def load_weights(self, tensors: dict[str, torch.Tensor], *, where: str = "SAE weights") -> SAE:
        """Copy ``W_enc, b_enc, W_dec, b_dec`` (and ``threshold``) in, checking every shape."""
        expected = self._expected_shapes()
        missing = [key for key in expected if key not in tensors]
        if missing:
            raise LoadError(
                f"{where}: missing {', '.join(repr(m) for m in missing)}; a {self.activation!r} SAE "
                f"needs {accepted(expected)} (present: {accepted(sorted(tensors)) or 'nothing'})"
            )
        for key, shape in expected.items():
            t = tensors[key]
            if not isinstance(t, torch.Tensor):
                raise LoadError(f"{where}: {key!r} must be a tensor, got {type(t).__name__}")
            if not t.dtype.is_floating_point:
                raise LoadError(
                    f"{where}: {key!r} has dtype {t.dtype}; accepted: a floating-point dtype "
                    f"({accepted(_DTYPES)}); integer, bool or complex weights are not cast"
                )
            got = tuple(t.shape)
            if got != shape:
                raise LoadError(
                    f"{where}: {key!r} has shape {list(got)}, expected {list(shape)} "
                    f"(d_in={self.d_in}, d_sae={self.d_sae})"
                )
        with torch.no_grad():
            for key in expected:
                getattr(self, key).copy_(tensors[key].to(self.dtype))
        return self

    def _expected_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = {"W_enc": (self.d_in, self.d_sae), "b_enc": (self.d_sae,),
                  "W_dec": (self.d_sae, self.d_in), "b_dec": (self.d_in,)}
        if self.activation == "jumprelu":
            shapes["threshold"] = (self.d_sae,)
        return shapes

    # -- computation ------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.d_in:
            where = f" (hook {self.hook_name!r})" if self.hook_name else ""
            raise ShapeError(
                f"SAE input has width {x.shape[-1]} (shape {list(x.shape)}) but the SAE{where} has "
                f"d_in={self.d_in}; attach it to a site of width {self.d_in}"
            )

    def normalize(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple | None]:
        """``(normalised x, stats)``; ``stats`` undo it in :meth:`denormalize`."""
        mode = self.normalize_activations
        if mode == "constant_norm_rescale":
            coeff = math.sqrt(self.d_in) / x.norm(dim=-1, keepdim=True)
            return x * coeff, (coeff,)
        if mode == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            centred = x - mu
            std = centred.std(dim=-1, keepdim=True)
            return centred / (std + self.layer_norm_eps), (mu, std)
        if mode == "expected_average_only_in" and self.norm_scaling_factor is not None:
            return x * self.norm_scaling_factor, None
        return x, None

    def denormalize(self, y: torch.Tensor, stats: tuple | None) -> torch.Tensor:
        mode = self.normalize_activations
        if mode in ("constant_norm_rescale", "layer_norm") and stats is None:
            raise ConfigError(
                f"SAE.decode: normalize_activations={mode!r} needs the stats of the encoded input; "
                f"use encode_with_stats(x) and pass its stats to decode(features, stats)"
            )
        if mode == "constant_norm_rescale":
            return y / stats[0]
        if mode == "layer_norm":
            mu, std = stats
            return y * std + mu
        if mode == "expected_average_only_in" and self.norm_scaling_factor is not None:
            return y / self.norm_scaling_factor
        return y

    def pre_activations(self, x_normalised: torch.Tensor) -> torch.Tensor:
        if self.apply_b_dec_to_input:
            x_normalised = x_normalised - self.b_dec
        return x_normalised @ self.W_enc + self.b_enc

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        if self.activation == "relu":
            return F.relu(pre)
        if self.activation == "jumprelu":
            return F.relu(pre) * (pre > self.threshold).to(pre.dtype)
        top = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, top.indices, F.relu(top.values))

    def encode_with_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple | None]:
        """``(features [..., d_sae], normalisation stats)`` for ``x [..., d_in]``."""
        self._check_input(x)
        x_n, stats = self.normalize(x.to(self.dtype))
        return self.activate(self.pre_activations(x_n)), stats

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_with_stats(x)[0]

    def decode(self, features: torch.Tensor, stats: tuple | None = None) -> torch.Tensor:
        if features.shape[-1] != self.d_sae:
            raise ShapeError(
                f"SAE.decode: features have width {features.shape[-1]} but the SAE has d_sae={self.d_sae}"
            )
        return self.denormalize(features.to(self.dtype) @ self.W_dec + self.b_dec, stats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction ``x_hat`` (in ``x``'s dtype)."""
        features, stats = self.encode_with_stats(x)
        return self.decode(features, stats).to(x.dtype)

    def extra_repr(self) -> str:
        k = f", k={self.k}" if self.k is not None else ""
        return (f"d_in={self.d_in}, d_sae={self.d_sae}, activation={self.activation!r}{k}, "
                f"normalize_activations={self.normalize_activations!r}, "
                f"apply_b_dec_to_input={self.apply_b_dec_to_input}, hook_name={self.hook_name!r}")
