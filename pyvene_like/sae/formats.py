"""Read published SAEs from their own file layouts, locally or from the Hugging Face Hub.

* **SAELens** (``format="saelens"``): a folder with ``cfg.json`` and ``sae_weights.safetensors``
  (``W_enc [d_in, d_sae]``, ``b_enc``, ``W_dec [d_sae, d_in]``, ``b_dec``, ``threshold`` for
  JumpReLU). Config fields read: ``architecture`` (``standard``, ``jumprelu``, ``topk``; default
  ``standard``), ``d_in``, ``d_sae``, ``k`` / ``activation_fn_kwargs.k``, ``activation_fn`` /
  ``activation_fn_str`` (``relu``, or ``topk`` in pre-6.0 configs), ``apply_b_dec_to_input``
  (default true), ``normalize_activations`` (also the old booleans), ``dtype``, and the hook name
  from ``metadata.hook_name`` (6.x), ``hook_name`` or ``hook_point`` (older).
* **Gemma Scope** (``format="gemma_scope"``): ``params.npz`` with ``W_enc, W_dec, b_enc, b_dec,
  threshold``; JumpReLU, no ``b_dec`` subtracted from the input, no normalisation. The hook is read
  from names like ``google/gemma-scope-2b-pt-res`` + ``layer_20/width_16k/average_l0_71``.
* **OpenAI** ``sparse_autoencoder`` (``format="openai"``): a torch state dict (``.pt``) with
  ``pre_bias``, ``encoder.weight [d_sae, d_in]``, ``latent_bias``, ``decoder.weight [d_in, d_sae]``,
  and ``activation`` (``"ReLU"`` or ``"TopK"`` with ``activation_state_dict = {k, postact_fn}``);
  TopK SAEs layer-normalise their input. It is read with ``torch.load(weights_only=True)``: a pickle
  that needs anything beyond tensors, strings, numbers and containers is refused.

A local folder or file is read directly; anything else is a Hub repo id, fetched file by file with
``huggingface_hub.hf_hub_download`` (its cache, ``HF_HUB_OFFLINE``, ``revision``, ``cache_dir``,
``local_files_only`` and ``token`` apply), with ``subfolder`` naming the SAE inside the repo.

Each format is one loader registered with :func:`register_sae_format` (its name, a detector and a
clue for the error when nothing matches) in :data:`SAE_FORMATS`; :func:`load_sae` dispatches
through that registry, so adding a format is one decorated function.
"""

from __future__ import annotations

import json
import os
import re
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError, LoadError, PyveneLikeWarning, accepted, did_you_mean
from ..registry import Registry
from ..validation import check_bool, check_path, check_positive_int
from .sae import NORMALIZATIONS, SAE, dtype_from_name

SAELENS_CONFIG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
GEMMA_SCOPE_PARAMS = "params.npz"
SAELENS_ARCHITECTURES = ("standard", "jumprelu", "topk")


# -- the format registry ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadOptions:
    """What :func:`load_sae` passes on to a format's loader and detector."""

    filename: str | None = None
    dtype: object = None
    norm_scaling_factor: float | None = None


@dataclass(frozen=True)
class SAEFormat:
    """A registered SAE format: ``load(source, options) -> SAE``; ``detect(source, options) ->
    bool`` says whether ``source`` holds this format (``None``: never guessed, only asked for by
    name); ``clue`` says what detection looks for, for the error when no format matches."""

    name: str
    load: Callable[[SAESource, LoadOptions], SAE]
    detect: Callable[[SAESource, LoadOptions], bool] | None = None
    clue: str = ""
    priority: int = 50

    def __str__(self) -> str:
        return f"the {self.name!r} SAE loader {self.load.__qualname__}"


#: Format name -> :class:`SAEFormat`, in registration order; ``FORMATS`` is the same registry.
SAE_FORMATS: Registry[SAEFormat] = Registry(
    "SAE format", "format", sort_names=False,
    unknown="load_sae: {field} {value!r} is not supported; accepted: {accepted}.{hint}",
)
FORMATS = SAE_FORMATS


def register_sae_format(name: str, *, detect: Callable[[SAESource, LoadOptions], bool] | None = None,
                        clue: str | None = None, priority: int = 50
                        ) -> Callable[[Callable[[SAESource, LoadOptions], SAE]], Callable[[SAESource, LoadOptions], SAE]]:
    """Decorator: register ``load(source: SAESource, options: LoadOptions) -> SAE`` as the loader of
    format ``name``. A new format is one decorated function::

        @register_sae_format("myformat", detect=lambda src, opts: src.has("my.json"), clue="'my.json'")
        def load_myformat(src, opts):
            return SAE(...).load_weights(...)

    When ``load_sae`` is not told the format, detectors run by ``priority`` (lower first), then in
    registration order: a detector that decides from the arguments alone (OpenAI: a ``.pt`` path or
    ``filename=``) goes before those that look for files.
    """

    def deco(load):
        SAE_FORMATS.add(name, SAEFormat(name, load, detect, clue or repr(name), priority))
        return load

    return deco


def load_sae(path_or_repo_id: str | os.PathLike, format: str | None = None, *, subfolder: str | None = None,
             filename: str | None = None, revision: str | None = None,
             cache_dir: str | os.PathLike | None = None, local_files_only: bool = False,
             token: str | bool | None = None, dtype: str | torch.dtype | None = None,
             device: str | torch.device | None = None,
             norm_scaling_factor: float | None = None, hook_name: str | None = None) -> SAE:
    """Load an SAE from a local folder/file or a Hub repo, in any registered format.

    ``format`` is found from the files when not given (``cfg.json``: SAELens, ``params.npz``:
    Gemma Scope, a ``.pt`` file: OpenAI). ``filename`` names an OpenAI ``.pt`` inside a folder or
    repo. ``norm_scaling_factor`` is the dataset constant of SAELens SAEs trained with
    ``normalize_activations="expected_average_only_in"``; ``hook_name`` overrides the file's.
    """
    fmt = SAE_FORMATS.get(format) if format is not None else None
    src = SAESource(path_or_repo_id, subfolder, revision, cache_dir, local_files_only, token)
    opts = LoadOptions(filename, dtype, norm_scaling_factor)
    if fmt is None:
        fmt = _detect(src, opts)
    sae = fmt.load(src, opts)
    if hook_name is not None:
        sae.hook_name = hook_name
    if device is not None:
        sae.to(device)
    return sae.eval()


def _detect(src: SAESource, opts: LoadOptions) -> SAEFormat:
    formats = list({id(f): f for f in SAE_FORMATS.as_dict().values()}.values())
    formats.sort(key=lambda f: f.priority)
    for fmt in formats:
        if fmt.detect is not None and fmt.detect(src, opts):
            return fmt
    clues = ", ".join(f.clue for f in formats if f.detect is not None)
    raise LoadError(
        f"load_sae: cannot tell the SAE format of {src.label()}: it shows none of {clues}; give "
        f"format= one of {accepted(FORMATS)}"
    )


# -- where the files come from -------------------------------------------------------------------
class SAESource:
    """Where an SAE's files come from: a local folder, a local file, or a Hub repo (+ subfolder).

    Loaders read files with :meth:`fetch` (a local path, downloaded when from the Hub) and test
    for them with :meth:`has`."""

    def __init__(self, path_or_repo_id: str | os.PathLike, subfolder: str | None, revision: str | None,
                 cache_dir: str | os.PathLike | None, local_files_only: bool, token: str | bool | None):
        if not isinstance(path_or_repo_id, (str, os.PathLike)):
            raise ConfigError(
                f"load_sae: expected a local path or a Hub repo id ('owner/name'), got "
                f"{type(path_or_repo_id).__name__}"
            )
        self.name = str(path_or_repo_id)
        self.subfolder = subfolder.strip("/") if subfolder else None
        self.hub = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token)
        path = Path(os.fspath(path_or_repo_id)).expanduser()
        if path.is_file():
            if subfolder:
                raise ConfigError(f"load_sae: {str(path)!r} is a file; subfolder={subfolder!r} needs a folder")
            self.local, self.file = path.parent, path
        elif path.is_dir():
            self.local = path / self.subfolder if self.subfolder else path
            self.file = None
            if not self.local.is_dir():
                raise LoadError(f"load_sae: {str(self.local)!r} is not a folder")
        else:
            self.local, self.file = None, None

    def label(self) -> str:
        if self.local is not None:
            return str(self.file or self.local)
        return f"Hub repo {self.name!r}" + (f", subfolder {self.subfolder!r}" if self.subfolder else "")

    def fetch(self, filename: str, *, required: bool = True) -> Path | None:
        if self.local is not None:
            if self.file is not None:
                return self.file if self.file.name == filename else self._missing(filename, required)
            path = self.local / filename
            return path if path.is_file() else self._missing(filename, required)
        return self._download(filename, required)

    def has(self, filename: str) -> bool:
        """Whether the source holds ``filename`` (fetched, if it is on the Hub)."""
        return self.fetch(filename, required=False) is not None

    def _missing(self, filename: str, required: bool):
        if not required:
            return None
        present = sorted(p.name for p in self.local.iterdir())[:10] if self.file is None else [self.file.name]
        raise LoadError(
            f"load_sae: {self.label()} has no {filename!r} (it holds: {', '.join(present) or 'nothing'})"
        )

    def _download(self, filename: str, required: bool) -> Path | None:
        from ..hub import resolve_file

        return resolve_file(self.name, filename, subfolder=self.subfolder, required=required,
                            what="load_sae", **self.hub)


# -- SAELens ---------------------------------------------------------------------------------------
@register_sae_format("saelens", detect=lambda src, opts: src.has(SAELENS_CONFIG), clue=f"{SAELENS_CONFIG!r} (SAELens)")
def _load_saelens(src: SAESource, opts: LoadOptions) -> SAE:
    dtype, norm_scaling_factor = opts.dtype, opts.norm_scaling_factor
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    cfg_path = src.fetch(SAELENS_CONFIG)
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LoadError(f"{cfg_path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise LoadError(f"{cfg_path}: expected a JSON object of SAE settings, got {type(cfg).__name__}")
    settings = saelens_settings(cfg, str(cfg_path))
    weights_path = src.fetch(SAELENS_WEIGHTS)
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError) as e:
        raise LoadError(f"{weights_path} is not a readable safetensors file ({e})") from None
    if "scaling_factor" in tensors:  # older SAELens saves; all ones unless fine-tuned
        factor = tensors.pop("scaling_factor")
        if not torch.all(factor == 1):
            raise LoadError(
                f"{weights_path}: 'scaling_factor' is not all ones (a finetuning_scaling_factor "
                f"SAE), which this loader does not support"
            )
    if settings["activation"] == "jumprelu" and "threshold" not in tensors and "log_threshold" in tensors:
        tensors["threshold"] = tensors.pop("log_threshold").exp()  # a TrainingSAE checkpoint
    if norm_scaling_factor is None and cfg.get("norm_scaling_factor") is not None:
        norm_scaling_factor = cfg["norm_scaling_factor"]  # written by save_sae
    if settings["normalize_activations"] == "expected_average_only_in":
        if norm_scaling_factor is None:
            warnings.warn(
                f"{cfg_path}: normalize_activations is 'expected_average_only_in' but no "
                f"norm_scaling_factor was given, so inputs are not rescaled (as in SAELens when the "
                f"release lists none); pass load_sae(..., norm_scaling_factor=sqrt(d_in) / mean ||x||)",
                PyveneLikeWarning,
                stacklevel=3,
            )
        settings["norm_scaling_factor"] = norm_scaling_factor
    elif norm_scaling_factor is not None:
        raise ConfigError(
            f"load_sae: norm_scaling_factor is only used by SAEs with normalize_activations="
            f"'expected_average_only_in'; {cfg_path} has {settings['normalize_activations']!r}"
        )
    if dtype is not None:
        settings["dtype"] = dtype
    w_enc = tensors.get("W_enc")
    want = (settings["d_in"], settings["d_sae"])
    if not isinstance(w_enc, torch.Tensor):
        raise LoadError(f"{weights_path}: missing 'W_enc' [d_in, d_sae]; a SAELens SAE holds 'W_enc', "
                        f"'b_enc', 'W_dec', 'b_dec' (present: {accepted(sorted(tensors)) or 'nothing'})")
    if tuple(w_enc.shape) != want:
        # Checked before building, so a wrong size in cfg.json is reported, not allocated.
        raise LoadError(
            f"{weights_path}: 'W_enc' has shape {list(w_enc.shape)}, expected {list(want)} "
            f"(d_in={want[0]}, d_sae={want[1]}) by {cfg_path.name}; cfg.json and the weights "
            f"must agree"
        )
    try:
        sae = SAE(**settings)
    except ConfigError as e:
        raise LoadError(f"{cfg_path}: {e}") from None
    return sae.load_weights(tensors, where=str(weights_path))


def save_sae(sae: SAE, save_directory: str | os.PathLike) -> Path:
    """Write ``sae`` in SAELens' layout (``cfg.json`` + ``sae_weights.safetensors``), which
    :func:`load_sae` (and SAELens) read back: an SAE from :func:`~pyvene_like.sae.train_sae` can be
    kept, shared on the Hub as a folder, and browsed by ``pyvene-like serve``. Settings SAELens
    has no field for (``norm_scaling_factor``, a non-default ``layer_norm_eps``) are written
    under those names and read back by :func:`load_sae`. Returns the folder."""
    from safetensors.torch import save_file

    if not isinstance(sae, SAE):
        raise ConfigError(f"save_sae: expected a pyvene_like SAE, got {type(sae).__name__}")
    folder = check_path(save_directory, "save_sae: save_directory")
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"save_sae: save_directory {str(folder)!r} is a file, not a folder")
    c = sae.config()
    arch = {"jumprelu": "jumprelu", "topk": "topk"}.get(c["activation"], "standard")
    cfg = {
        "architecture": arch, "d_in": c["d_in"], "d_sae": c["d_sae"],
        "activation_fn": "topk" if c["activation"] == "topk" else "relu",
        "activation_fn_kwargs": {"k": c["k"]} if c["k"] is not None else {},
        "apply_b_dec_to_input": c["apply_b_dec_to_input"],
        "normalize_activations": c["normalize_activations"], "dtype": c["dtype"],
        "hook_name": c["hook_name"], "metadata": {"hook_name": c["hook_name"], "library": "pyvene_like"},
        "norm_scaling_factor": c["norm_scaling_factor"], "layer_norm_eps": c["layer_norm_eps"],
    }
    if c["k"] is not None:
        cfg["k"] = c["k"]
    tensors = {name: p.detach().contiguous().cpu() for name, p in sae.named_parameters() if p is not None}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SAELENS_CONFIG).write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    save_file(tensors, str(folder / SAELENS_WEIGHTS))
    return folder


def saelens_settings(cfg: dict, where: str = "cfg.json") -> dict:
    """The :class:`SAE` settings a SAELens ``cfg.json`` describes (pre-6.0 and 6.x layouts)."""
    arch = cfg.get("architecture", "standard")
    if arch not in SAELENS_ARCHITECTURES:
        raise LoadError(
            f"{where}: architecture {arch!r} is not supported; accepted: "
            f"{accepted(SAELENS_ARCHITECTURES)}.{did_you_mean(str(arch), SAELENS_ARCHITECTURES)}"
        )
    for field in ("d_in", "d_sae"):
        value = cfg.get(field)
        if field not in cfg:
            raise LoadError(f"{where}: field {field!r} is missing; a SAELens cfg.json gives d_in and d_sae")
        check_positive_int(value, f"{where}: field {field!r}", error=LoadError)
    fn = cfg.get("activation_fn", cfg.get("activation_fn_str", "relu"))
    fn_kwargs = cfg.get("activation_fn_kwargs") or {}
    if not isinstance(fn_kwargs, dict):
        raise LoadError(f"{where}: field 'activation_fn_kwargs' must be an object (like {{\"k\": 32}}), "
                        f"got {fn_kwargs!r}")
    if arch == "jumprelu":
        activation, k = "jumprelu", None
    elif arch == "topk" or fn == "topk":
        activation, k = "topk", cfg.get("k", fn_kwargs.get("k"))
        if k is None:
            raise LoadError(f"{where}: a TopK SAE needs field 'k' (or activation_fn_kwargs.k); none given")
    elif fn == "relu":
        activation, k = "relu", None
    else:
        raise LoadError(
            f"{where}: activation_fn {fn!r} of a 'standard' SAE is not supported; accepted: 'relu', 'topk'"
        )
    norm = cfg.get("normalize_activations", "none")
    if norm is None or norm is False:
        norm = "none"
    elif norm is True:
        norm = "expected_average_only_in"
    if norm not in NORMALIZATIONS:
        raise LoadError(
            f"{where}: normalize_activations {norm!r} is not supported; accepted: "
            f"{accepted(NORMALIZATIONS)}.{did_you_mean(str(norm), NORMALIZATIONS)}"
        )
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    hook = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    if hook is not None and not isinstance(hook, str):
        raise LoadError(f"{where}: the hook name (metadata.hook_name, hook_name or hook_point) must be "
                        f"a string, got {hook!r}")
    dtype = cfg.get("dtype", "float32")
    try:
        dtype_from_name(dtype)
    except ConfigError as e:
        raise LoadError(f"{where}: {e}") from None
    return {
        "d_in": cfg["d_in"], "d_sae": cfg["d_sae"], "activation": activation, "k": k,
        "apply_b_dec_to_input": check_bool(cfg.get("apply_b_dec_to_input", True),
                                           f"{where}: apply_b_dec_to_input", error=LoadError),
        "normalize_activations": norm, "hook_name": hook, "dtype": dtype,
        **({"layer_norm_eps": cfg["layer_norm_eps"]} if cfg.get("layer_norm_eps") is not None else {}),
    }


# -- Gemma Scope -----------------------------------------------------------------------------------
_GEMMA_KEYS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


@register_sae_format("gemma_scope", detect=lambda src, opts: src.has(GEMMA_SCOPE_PARAMS),
                     clue=f"{GEMMA_SCOPE_PARAMS!r} (Gemma Scope)")
def _load_gemma_scope(src: SAESource, opts: LoadOptions) -> SAE:
    dtype = opts.dtype
    import numpy as np

    path = src.fetch(GEMMA_SCOPE_PARAMS)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {("W_" + k[2:] if k.startswith("w_") else k): np.asarray(data[k]) for k in data.files}
    except ValueError as e:
        if "pickle" not in str(e):
            raise LoadError(f"{path} is not a readable .npz file (truncated or corrupt: {e})") from None
        raise LoadError(f"{path}: refused: it holds pickled objects, not plain arrays ({e})") from None
    except (OSError, EOFError, RuntimeError, zipfile.BadZipFile, zlib.error, KeyError) as e:
        raise LoadError(f"{path} is not a readable .npz file (truncated or corrupt: {e})") from None
    missing = [k for k in _GEMMA_KEYS if k not in arrays]
    if missing:
        raise LoadError(
            f"{path}: missing {', '.join(repr(m) for m in missing)}; a Gemma Scope params.npz holds "
            f"{accepted(_GEMMA_KEYS)} (present: {accepted(sorted(arrays)) or 'nothing'})"
        )
    for key in _GEMMA_KEYS:
        if arrays[key].dtype.kind != "f":
            raise LoadError(
                f"{path}: {key!r} has dtype {arrays[key].dtype}; accepted: a floating-point dtype "
                f"(float16, float32, float64); integer, bool or complex arrays are not cast"
            )
    w_enc = arrays["W_enc"]
    if w_enc.ndim != 2:
        raise LoadError(f"{path}: 'W_enc' must be 2-D [d_in, d_sae], got shape {list(w_enc.shape)}")
    d_in, d_sae = (int(s) for s in w_enc.shape)
    sae = SAE(d_in, d_sae, activation="jumprelu", apply_b_dec_to_input=False,
              hook_name=gemma_scope_hook_name(src.name, src.subfolder),
              dtype=dtype if dtype is not None else "float32")
    return sae.load_weights({k: torch.from_numpy(arrays[k]) for k in _GEMMA_KEYS}, where=str(path))


def gemma_scope_hook_name(repo: str, subfolder: str | None) -> str | None:
    """``("google/gemma-scope-2b-pt-res", "layer_20/...")`` -> ``"blocks.20.hook_resid_post"``."""
    text = f"{repo}/{subfolder or ''}"
    layer = re.search(r"layer_(\d+)", text)
    if layer is None:
        return None
    kind = re.search(r"-(res|mlp|att)(?:-|/|$)", text)
    hook = {"res": "hook_resid_post", "mlp": "hook_mlp_out", "att": "attn.hook_z"}.get(kind and kind.group(1))
    return f"blocks.{layer.group(1)}.{hook}" if hook else None


# -- OpenAI sparse_autoencoder ---------------------------------------------------------------------
_OPENAI_KEYS = ("pre_bias", "encoder.weight", "latent_bias", "decoder.weight")


def _is_openai(src: SAESource, opts: LoadOptions) -> bool:
    return opts.filename is not None or (src.file is not None and src.file.suffix in (".pt", ".pth"))


@register_sae_format("openai", detect=_is_openai, clue="an OpenAI .pt file (a .pt path, or filename=)", priority=0)
def _load_openai(src: SAESource, opts: LoadOptions) -> SAE:
    filename, dtype = opts.filename, opts.dtype
    import pickle

    if filename is None and src.file is None:
        raise ConfigError(
            f"load_sae: an OpenAI SAE is one .pt file; give its path, or filename= inside {src.label()}"
        )
    path = src.fetch(filename or src.file.name)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LoadError(
            f"{path}: refused: this pickle needs more than tensors, strings and numbers to load "
            f"(torch.load(weights_only=True) says: {first}); OpenAI SAE state dicts need nothing else, "
            f"and arbitrary pickles can run code"
        ) from None
    except (OSError, EOFError) as e:
        raise LoadError(f"{path} is not a readable torch file ({e})") from None
    if not isinstance(state, dict):
        raise LoadError(f"{path}: expected a state dict, got {type(state).__name__}")
    return sae_from_openai_state_dict(state, str(path), dtype)


def sae_from_openai_state_dict(state: dict, where: str = "state dict", dtype: str | torch.dtype | None = None) -> SAE:
    """An :class:`SAE` equal to OpenAI's ``Autoencoder.from_state_dict(state)``."""
    missing = [k for k in _OPENAI_KEYS if k not in state]
    if missing:
        raise LoadError(
            f"{where}: missing {', '.join(repr(m) for m in missing)}; an OpenAI sparse_autoencoder "
            f"state dict holds {accepted(_OPENAI_KEYS)} (present: {accepted(sorted(map(str, state))) or 'nothing'})"
        )
    for key in _OPENAI_KEYS:
        if not isinstance(state[key], torch.Tensor):
            raise LoadError(f"{where}: {key!r} must be a tensor, got {type(state[key]).__name__}")
    enc = state["encoder.weight"]
    if enc.ndim != 2:
        raise LoadError(f"{where}: 'encoder.weight' must be 2-D [d_sae, d_in], got shape {list(enc.shape)}")
    d_sae, d_in = (int(s) for s in enc.shape)
    expected = {"decoder.weight": (d_in, d_sae), "pre_bias": (d_in,), "latent_bias": (d_sae,)}
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise LoadError(
                f"{where}: {key!r} has shape {list(state[key].shape)}, expected {list(shape)} "
                f"(encoder.weight is [{d_sae}, {d_in}])"
            )
    name = state.get("activation", "ReLU")
    if name == "TopK":
        act = state.get("activation_state_dict") or {}
        if not isinstance(act, dict):
            raise LoadError(f"{where}: 'activation_state_dict' must be a dict {{k, postact_fn}}, got {act!r}")
        k, post = act.get("k"), act.get("postact_fn", "ReLU")
        if post != "ReLU":
            raise LoadError(f"{where}: TopK postact_fn {post!r} is not supported; accepted: 'ReLU'")
        settings = {"activation": "topk", "k": k, "normalize_activations": "layer_norm"}
    elif name == "ReLU":
        settings = {"activation": "relu"}
    else:
        raise LoadError(f"{where}: activation {name!r} is not supported; accepted: 'ReLU', 'TopK'")
    try:
        sae = SAE(d_in, d_sae, apply_b_dec_to_input=True, dtype=dtype if dtype is not None else enc.dtype,
                  **settings)
    except ConfigError as e:
        raise LoadError(f"{where}: {e}") from None
    return sae.load_weights({"W_enc": enc.T, "b_enc": state["latent_bias"], "W_dec": state["decoder.weight"].T,
                             "b_dec": state["pre_bias"]}, where=where)
