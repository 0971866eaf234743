"""Save, load and share interventions: a folder (or Hub repo) of three files.

* ``config.json`` -- the :class:`~pyvene_like.IntervenableConfig` with interventions named by
  their registry names, the library and file-format versions, the base model's identity
  (name or path, ``model_type``, a hash of its config) and, per intervention, the names of its
  tensors and its non-tensor settings;
* ``interventions.safetensors`` -- every tensor (intervention parameters and buffers, given
  source representations, tensor ``intervention_kwargs``); never pickle;
* ``README.md`` -- a model card written with ``huggingface_hub``'s card tools.

What is saved of an intervention is its ``state_dict()``: for a parametrised weight (the
rotations, kept orthonormal by ``torch.nn.utils.parametrize``) that is the unconstrained
tensor and the parametrization's buffers, from which the same effective weight is computed
bit for bit. A non-tensor setting survives a save when its class exposes it as a constructor
argument, an attribute and a ``set_<name>(value)`` method with the same name (as
``RotatedSpaceIntervention.set_interchange_dim``), or through torch's
``get_extra_state``/``set_extra_state`` with JSON values.

An intervention given as a plain Python function (``intervention_type=fn`` or the
``"lambda"`` type) is saved by name only, since code is not data:
``from_pretrained(..., functions={"fn_name": fn})`` gives it back (a warning at save time
says so).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .config import IntervenableConfig, RepresentationConfig, _LambdaFactory
from .errors import (
    ConfigError,
    LoadError,
    PyveneLikeError,
    PyveneLikeWarning,
    accepted,
    did_you_mean,
)
from .interventions.base import Intervention
from .interventions.basic import LambdaIntervention
from .registry import get_intervention_class

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "interventions.safetensors"
CARD_NAME = "README.md"
LIBRARY = "pyvene_like"
#: Layout of config.json / interventions.safetensors; bumped only when old readers would misread.
FORMAT_VERSION = 1
_TENSOR_REF = "__safetensors__"  # {"__safetensors__": key} stands for a tensor in the weights file
# Config entries that say how a model is run, not what it is: left out of the identity hash.
_VOLATILE_CONFIG_KEYS = frozenset(
    {"transformers_version", "architectures", "dtype", "torch_dtype", "use_cache", "return_dict",
     "output_attentions", "output_hidden_states", "torchscript"}
)


# -- the base model's identity ---------------------------------------------------------------
def model_identity(model: nn.Module) -> dict:
    """``name_or_path``, ``model_type``, ``class`` and ``config_hash`` of a model.

    For a transformers model the hash is the sha256 of its config (without the entries that
    only say how it runs: dtype, ``use_cache``, versions, private ``_`` keys); for a plain
    ``nn.Module`` it is the sha256 of its parameter names and shapes.
    """
    cfg = getattr(model, "config", None)
    if cfg is not None and callable(getattr(cfg, "to_dict", None)):
        data = _stable(cfg.to_dict())
        name = getattr(model, "name_or_path", None) or getattr(cfg, "_name_or_path", None) or None
        model_type = getattr(cfg, "model_type", None) or None
        hashed = "config"
    else:
        data = [[n, list(p.shape)] for n, p in model.named_parameters()]
        name, model_type, hashed = None, None, "parameter_shapes"
    digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
    return {
        "name_or_path": str(name) if name else None,
        "model_type": model_type,
        "class": type(model).__name__,
        "config_hash": f"sha256:{digest}",
        "hash_of": hashed,
    }


def _stable(value):
    if isinstance(value, dict):
        return {
            k: _stable(v) for k, v in value.items()
            if not (isinstance(k, str) and (k.startswith("_") or k in _VOLATILE_CONFIG_KEYS))
        }
    if isinstance(value, (list, tuple)):
        return [_stable(v) for v in value]
    return value


# -- saving ------------------------------------------------------------------------------------
def save_pretrained(im, save_directory, *, repo_id: str | None = None) -> Path:
    """Write ``config.json``, ``interventions.safetensors`` and ``README.md`` into a folder.

    ``repo_id`` only goes into the model card's usage snippet. Returns the folder.
    """
    from safetensors.torch import save_file

    folder = Path(save_directory)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"save_pretrained: {str(folder)!r} is a file; give a directory")
    config_path = folder / CONFIG_NAME
    if config_path.is_file() and not _is_our_config(config_path):
        raise ConfigError(
            f"save_pretrained: {str(folder)!r} already holds a config.json that is not a "
            f"pyvene_like save (a model's own config?); save the interventions into another directory"
        )
    doc, tensors = describe(im)
    folder.mkdir(parents=True, exist_ok=True)
    weights_path = folder / WEIGHTS_NAME
    save_file(tensors, str(weights_path), metadata={"format": "pt", "library": LIBRARY,
                                                    "format_version": str(FORMAT_VERSION)})
    doc["weights"] = {"file": WEIGHTS_NAME, "sha256": _sha256(weights_path)}
    config_path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    model_card(doc, repo_id=repo_id).save(folder / CARD_NAME)
    return folder


def describe(im) -> tuple[dict, dict[str, torch.Tensor]]:
    """The JSON document and the tensors that :func:`save_pretrained` writes."""
    tensors = _Tensors()
    reps, entries, functions = [], [], []
    owner: dict[int, int] = {}  # id(intervention) -> index of the first slot holding it
    for slot in im._slots:
        i, iv = slot.index, slot.intervention
        rep_dict, function = _representation_dict(i, slot, tensors)
        reps.append(rep_dict)
        entry: dict[str, Any] = {"key": slot.key, "class": type(iv).__name__}
        if function is not None:
            entry["function"] = function
            functions.append((i, function))
        first = owner.setdefault(id(iv), i)
        if first != i:
            entry["shares_with"] = first  # linked: the weights are stored once, under `first`
        else:
            state, extra = _split_state(i, iv)
            entry["tensors"] = []
            for name, t in state.items():
                key = f"intervention.{i}.{name}"
                tensors[key] = t
                entry["tensors"].append(key)
            settings = _settings(iv)
            if settings:
                entry["settings"] = settings
            if extra:
                entry["extra_state"] = extra
        entries.append(entry)
    if functions:
        named = ", ".join(f"{name!r}: <fn>" for _, name in functions)
        warnings.warn(
            f"save_pretrained: representation(s) {', '.join(str(i) for i, _ in functions)} use plain "
            f"functions as interventions, which are saved by name only (code is not saved); load "
            f"with IntervenableModel.from_pretrained(..., functions={{{named}}}), or register a "
            f"class with @pyvene_like.register_intervention to save it by type",
            PyveneLikeWarning,
            stacklevel=4,
        )
    doc = {
        "library": LIBRARY,
        "library_version": __version__,
        "format_version": FORMAT_VERSION,
        "base_model": model_identity(im.model),
        "intervenable_config": {"mode": im.config.mode, "representations": reps},
        "interventions": entries,
    }
    return doc, dict(tensors)


class _Tensors(dict):
    """Tensors bound for safetensors: on the CPU, contiguous, and copied when their memory is
    already used by another entry (safetensors refuses shared memory: tied or reused tensors)."""

    def __init__(self):
        super().__init__()
        self._storages: set[int] = set()

    def __setitem__(self, key, t: torch.Tensor):
        t = t.detach().to("cpu").contiguous()
        if t.numel() and t.untyped_storage().data_ptr() in self._storages:
            t = t.clone()
        if t.numel():
            self._storages.add(t.untyped_storage().data_ptr())
        super().__setitem__(key, t)


def _representation_dict(i: int, slot, tensors: dict) -> tuple[dict, str | None]:
    """The JSON form of a representation, its intervention named by type; tensors go to ``tensors``."""
    rep = slot.rep
    cls, kwargs, function = _intervention_spec(i, slot)
    plain = {}
    for name, value in kwargs.items():
        if isinstance(value, torch.Tensor):
            key = f"intervention_kwargs.{i}.{name}"
            tensors[key] = value
            value = {_TENSOR_REF: key}
        plain[name] = value
    out = dataclasses.replace(
        rep, intervention=None, intervention_type=cls, intervention_kwargs={}, source_representation=None
    ).to_dict()
    out["intervention_kwargs"] = plain
    if rep.source_representation is not None:
        key = f"source_representation.{i}"
        tensors[key] = rep.source_representation
        out["source_representation"] = {_TENSOR_REF: key}
    for name, value in out.items():
        _check_json(value, f"representation {i}: {name}")
    return out, function


def _intervention_spec(i: int, slot):
    """(registered class, constructor kwargs, function name or None) that rebuild ``slot``'s intervention."""
    rep, iv = slot.rep, slot.intervention
    # Modules given in intervention_kwargs (an SAE) are not JSON: such an intervention is saved
    # as an instance is, by its constructor's attributes (e.g. sae_config) and its state dict.
    built_from_modules = any(isinstance(v, nn.Module) for v in rep.intervention_kwargs.values())
    if rep.intervention is None and not built_from_modules:
        factory = rep.intervention_type
        kwargs = dict(rep.intervention_kwargs)
        if isinstance(factory, _LambdaFactory):
            return LambdaIntervention, kwargs, _function_name(factory.fn)
        if factory is LambdaIntervention:
            return LambdaIntervention, kwargs, _function_name(kwargs.pop("fn", iv.fn))
        _registered(i, factory)
        return factory, kwargs, None
    # An instance: rebuilt from its registered name and the constructor arguments it keeps.
    cls = type(iv)
    if isinstance(iv, LambdaIntervention):
        return LambdaIntervention, {"needs_source": iv.source_from is not None}, _function_name(iv.fn)
    _registered(i, cls)
    kwargs = {}
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        value = getattr(iv, p.name, inspect.Parameter.empty)
        if value is not inspect.Parameter.empty and not isinstance(value, (torch.Tensor, nn.Module)):
            kwargs[p.name] = value
        elif p.default is p.empty:
            raise ConfigError(
                f"save_pretrained: representation {i} holds a {cls.__name__} instance whose "
                f"constructor argument {p.name!r} is not kept as an attribute of that name, so it "
                f"cannot be rebuilt; give intervention_type={cls.registry_name!r} and "
                f"intervention_kwargs in the RepresentationConfig instead of intervention="
            )
    try:
        probe = cls(**kwargs)
    except (PyveneLikeError, TypeError, ValueError) as e:
        raise ConfigError(
            f"save_pretrained: representation {i} holds a {cls.__name__} instance that cannot be "
            f"rebuilt from its attributes {kwargs} ({e}); give intervention_type and "
            f"intervention_kwargs instead of intervention="
        ) from e
    changed = [k for k, v in kwargs.items() if getattr(probe, k, None) != v]
    if changed:
        raise ConfigError(
            f"save_pretrained: representation {i} holds a {cls.__name__} instance whose "
            f"attribute {changed[0]!r} does not reproduce its constructor argument, so it cannot "
            f"be rebuilt; give intervention_type={cls.registry_name!r} and intervention_kwargs "
            f"instead of intervention="
        )
    return cls, kwargs, None


def _registered(i: int, cls) -> None:
    name = getattr(cls, "registry_name", None)
    try:
        ok = name is not None and get_intervention_class(name) is cls
    except ConfigError:
        ok = False
    if not ok:
        raise ConfigError(
            f"save_pretrained: representation {i} uses {cls.__qualname__}, which is not registered; "
            f"decorate it with @pyvene_like.register_intervention('<name>') so config.json can name it"
        )


def _function_name(fn) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


def _split_state(i: int, iv: Intervention) -> tuple[dict, dict]:
    """The intervention's state dict split into tensors and JSON extra states (torch's ``_extra_state``)."""
    tensors, extra = {}, {}
    for name, value in iv.state_dict().items():
        if isinstance(value, torch.Tensor):
            tensors[name] = value
        else:
            _check_json(value, f"representation {i}: the extra state {name!r} of {type(iv).__name__}")
            extra[name] = value
    return tensors, extra


def _settings(iv: Intervention) -> dict:
    """Non-tensor settings a class lets change after construction: ``name`` is a constructor
    argument, an attribute and has a ``set_<name>`` method."""
    out = {}
    for name in list(inspect.signature(type(iv).__init__).parameters)[1:]:
        setter = getattr(iv, f"set_{name}", None)
        value = getattr(iv, name, None)
        if callable(setter) and isinstance(value, (bool, int, float, str)):
            out[name] = value
    return out


def _check_json(value, label: str) -> None:
    try:
        same = json.loads(json.dumps(value)) == value
    except (TypeError, ValueError):
        same = False
    if not same:
        raise ConfigError(
            f"save_pretrained: {label} is {value!r} ({type(value).__name__}), which config.json "
            f"cannot hold as it is; use strings, numbers, booleans, None, lists and dicts of them "
            f"(tuples come back as lists), or tensors"
        )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def _is_our_config(path: Path) -> bool:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("library") == LIBRARY
    except (OSError, ValueError, AttributeError):
        return False


# -- the model card ----------------------------------------------------------------------------
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _hub_base_model(name: str | None) -> str | None:
    """The base model's name when it reads as a Hub repo id (not a local path)."""
    if not name or os.path.isabs(name) or os.path.exists(name) or not _REPO_ID.match(name):
        return None
    return name


def model_card(doc: dict, repo_id: str | None = None):
    """A :class:`huggingface_hub.ModelCard` describing a saved document."""
    from huggingface_hub import ModelCard, ModelCardData

    base = doc["base_model"]
    reps = doc["intervenable_config"]["representations"]
    types = sorted({r["intervention_type"] for r in reps})
    hub_base = _hub_base_model(base.get("name_or_path"))
    data = ModelCardData(
        library_name=LIBRARY,
        tags=[LIBRARY, "interventions", "interpretability", *types],
        base_model=hub_base,
    )
    rows = "\n".join(
        f"| {i} | {r['layer']} | `{r['component']}` | `{r['unit']}` | `{r['intervention_type']}` |"
        for i, r in enumerate(reps)
    )
    shown_base = base.get("name_or_path") or base.get("class")
    where = repo_id or "path/to/this/folder"
    if hub_base and base.get("class"):
        load_model = (
            f"from transformers import {base['class']}\n\n"
            f"model = {base['class']}.from_pretrained({hub_base!r})"
        )
    else:
        load_model = "model = ...  # the base model these interventions were trained on"
    functions = [e["function"] for e in doc["interventions"] if "function" in e]
    fn_arg = ""
    fn_note = ""
    if functions:
        fn_arg = ", functions={" + ", ".join(f"{f!r}: ..." for f in functions) + "}"
        fn_note = (
            "\nSome interventions are plain Python functions, saved by name only: give them again "
            "with `functions=`.\n"
        )
    body = f"""
# pyvene_like interventions on {shown_base}

Interventions on the internals of `{shown_base}` (`model_type`: {base.get('model_type')}),
saved with pyvene_like {doc['library_version']} (mode
`{doc['intervenable_config']['mode']}`).

| # | layer | component | unit | intervention |
|---|---:|---|---|---|
{rows}

## Use

```python
import pyvene_like as pv
{load_model}
im = pv.IntervenableModel.from_pretrained({where!r}, model=model{fn_arg})
```
{fn_note}
## Files

* `config.json`: the intervention config, the library version and the base model's identity
  (config hash `{base.get('config_hash')}`; loading onto another model warns).
* `interventions.safetensors`: every tensor (parameters, buffers, source representations).
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


# -- loading -----------------------------------------------------------------------------------
def resolve_folder(path_or_repo_id, *, revision=None, cache_dir=None, local_files_only=False,
                   token=None, allow_patterns=None, what: str = "from_pretrained") -> Path:
    """A local folder, or the snapshot folder of a Hub repo (downloaded, or from the cache).

    ``allow_patterns``: the files to fetch from the Hub (default: this module's three files);
    ``what``: the caller's name, for messages."""
    path = Path(os.fspath(path_or_repo_id)).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise LoadError(
            f"{what}: {str(path)!r} is a file; give the folder that holds {CONFIG_NAME} and "
            f"{WEIGHTS_NAME}, or a Hub repo id"
        )
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        HFValidationError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id = str(path_or_repo_id)
    where = str(cache_dir or constants.HF_HUB_CACHE)
    try:
        folder = snapshot_download(
            repo_id, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
            token=token, allow_patterns=allow_patterns or [CONFIG_NAME, WEIGHTS_NAME, CARD_NAME],
            library_name=LIBRARY, library_version=__version__,
        )
    except HFValidationError as e:
        raise LoadError(
            f"{what}: {repo_id!r} is neither a local folder nor a valid Hub repo id "
            f"('owner/name'): {e}"
        ) from None
    except IncompleteSnapshotError as e:
        raise LoadError(f"{what}: the cached copy of Hub repo {repo_id!r} is incomplete: {e}") from None
    except LocalEntryNotFoundError:
        if local_files_only:
            offline = "local_files_only=True"
        elif constants.is_offline_mode():
            offline = "offline mode is on (HF_HUB_OFFLINE=1)"
        else:
            offline = "the Hub could not be reached"
        raise LoadError(
            f"{what}: Hub repo {repo_id!r} (revision {revision or 'main'!r}) is not in the "
            f"local Hub cache {where!r} and {offline}; download it once with network access, or "
            f"give cache_dir= where it is cached, or a local folder"
        ) from None
    except RevisionNotFoundError:
        raise LoadError(f"{what}: Hub repo {repo_id!r} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise LoadError(
            f"{what}: {repo_id!r} is not a local folder and no Hub repo of that name was "
            f"found (or it is private: pass token=)"
        ) from None
    except (OSError, ValueError) as e:  # other Hub/HTTP failures
        raise LoadError(f"{what}: could not fetch Hub repo {repo_id!r}: {e}") from e
    return Path(folder)


def read_json(folder: Path, name: str, caller: str, writer: str) -> tuple[Path, object]:
    """``folder/name`` parsed as JSON, or a LoadError saying what the folder holds instead."""
    path = folder / name
    if not path.is_file():
        present = sorted(p.name for p in folder.iterdir())[:10]
        raise LoadError(
            f"{caller}: {str(folder)!r} has no {name} (it holds: "
            f"{', '.join(present) or 'nothing'}); give a folder written by {writer}"
        )
    try:
        return path, json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LoadError(f"{path}: not valid JSON ({e})") from None


def read_config(folder: Path) -> dict:
    """Parse and check ``config.json``: present, JSON, ours, of a format we read."""
    path, doc = read_json(folder, CONFIG_NAME, "from_pretrained", "save_pretrained")
    if not isinstance(doc, dict) or doc.get("library") != LIBRARY:
        hint = ""
        if isinstance(doc, dict) and "model_type" in doc:
            hint = f" It looks like a model's own config (model_type {doc['model_type']!r})."
        raise LoadError(
            f"{path}: not a pyvene_like save (field 'library' is "
            f"{doc.get('library') if isinstance(doc, dict) else None!r}, expected {LIBRARY!r}).{hint}"
        )
    version = doc.get("library_version")
    if _newer(version, __version__):
        warnings.warn(
            f"{path}: saved by pyvene_like {version}, newer than this pyvene_like {__version__}; "
            f"settings it added may be missing or rejected here: upgrade pyvene_like",
            PyveneLikeWarning,
            stacklevel=4,
        )
    fmt = doc.get("format_version")
    if not isinstance(fmt, int) or fmt < 1:
        raise LoadError(f"{path}: format_version {fmt!r} is not valid; accepted: 1..{FORMAT_VERSION}")
    if fmt > FORMAT_VERSION:
        raise LoadError(
            f"{path}: format_version {fmt} is newer than the {FORMAT_VERSION} this pyvene_like "
            f"{__version__} reads (written by pyvene_like {version}); upgrade pyvene_like"
        )
    for field in ("intervenable_config", "interventions", "base_model"):
        if field not in doc:
            raise LoadError(f"{path}: field {field!r} is missing; the file is incomplete")
    reps, entries = doc["intervenable_config"].get("representations"), doc["interventions"]
    if not isinstance(reps, list) or not isinstance(entries, list) or len(reps) != len(entries):
        raise LoadError(
            f"{path}: 'intervenable_config.representations' and 'interventions' must be lists of "
            f"the same length, got {type(reps).__name__} and {type(entries).__name__}"
        )
    return doc


def _newer(saved, ours) -> bool:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(str(saved)) > Version(ours)
    except InvalidVersion:
        return False


def read_weights(folder: Path, doc: dict) -> dict[str, torch.Tensor]:
    """Load ``interventions.safetensors``; clear errors when it is missing, truncated or altered."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = folder / WEIGHTS_NAME
    n = sum(len(e.get("tensors", ())) for e in doc["interventions"])
    if not path.is_file():
        raise LoadError(
            f"from_pretrained: {path} is missing; {CONFIG_NAME} expects it to hold {n} "
            f"intervention tensor(s). Copy or download it again, or save again with save_pretrained"
        )
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise LoadError(
            f"{path} is not a readable safetensors file (truncated or corrupt: {e}); copy or "
            f"download it again, or save again with save_pretrained"
        ) from None
    recorded = (doc.get("weights") or {}).get("sha256")
    if recorded is not None and recorded != _sha256(path):
        raise LoadError(
            f"{path} does not match the sha256 recorded in {CONFIG_NAME} ({recorded[:19]}...): it "
            f"was corrupted or replaced after saving; copy or download it again, or save again"
        )
    return tensors


def load_pretrained(path_or_repo_id, model, *, functions: dict | None = None, revision=None,
                    cache_dir=None, local_files_only: bool = False, token=None, cls=None):
    """Rebuild an :class:`~pyvene_like.IntervenableModel` on ``model`` from a save."""
    from .model import IntervenableModel

    cls = IntervenableModel if cls is None else cls
    if not isinstance(path_or_repo_id, (str, os.PathLike)):
        raise ConfigError(
            f"from_pretrained: expected a folder path or a Hub repo id ('owner/name'), got "
            f"{type(path_or_repo_id).__name__}"
        )
    if functions is not None and not isinstance(functions, dict):
        raise ConfigError(
            f"from_pretrained: functions must be a dict {{saved function name or representation "
            f"index: function}}, got {type(functions).__name__}"
        )
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"from_pretrained: model must be the base torch.nn.Module to intervene on, got "
            f"{type(model).__name__}; load it first (e.g. AutoModelForCausalLM.from_pretrained(...))"
        )
    folder = resolve_folder(path_or_repo_id, revision=revision, cache_dir=cache_dir,
                            local_files_only=local_files_only, token=token)
    doc = read_config(folder)
    path = folder / CONFIG_NAME
    _check_base_model(path, doc["base_model"], model)
    weights = read_weights(folder, doc)
    config = _rebuild_config(path, doc, weights, functions or {})
    try:
        im = cls(config, model)
    except PyveneLikeError as e:
        raise type(e)(f"{path} does not fit this model: {e}") from e
    _load_states(folder, doc, weights, im)
    return im


def _check_base_model(path: Path, saved: dict, model: nn.Module) -> None:
    now = model_identity(model)
    if not isinstance(saved, dict):
        raise LoadError(f"{path}: field 'base_model' must be a dict, got {saved!r}")
    same_type = saved.get("model_type") == now["model_type"]
    if same_type and saved.get("config_hash") == now["config_hash"]:
        return

    def show(ident):
        return (f"{ident.get('name_or_path') or ident.get('class')!r} (model_type "
                f"{ident.get('model_type')!r}, {ident.get('hash_of')} hash "
                f"{str(ident.get('config_hash'))[:19]}...)")

    what = "model_type" if not same_type else "config"
    warnings.warn(
        f"{path}: these interventions were saved on base model {show(saved)} but are being loaded "
        f"onto {show(now)}; the {what} differs, so layers, components and widths may not mean "
        f"the same thing. Pass the model they were saved on",
        PyveneLikeWarning,
        stacklevel=4,
    )


def _rebuild_config(path: Path, doc: dict, weights: dict, functions: dict) -> IntervenableConfig:
    entries = doc["interventions"]
    reps_json = doc["intervenable_config"]["representations"]
    wanted = {}  # function keys the save needs -> accepted spellings
    reps = []
    for i, (data, entry) in enumerate(zip(reps_json, entries)):
        if not isinstance(data, dict):
            raise LoadError(f"{path}: representation {i} must be a dict, got {data!r}")
        data = dict(data)
        if isinstance(data.get("intervention_type"), str):
            try:
                get_intervention_class(data["intervention_type"])
            except ConfigError as e:
                raise LoadError(f"{path}: representation {i}: {e}") from None
        data["source_representation"] = _tensor_ref(path, i, "source_representation",
                                                    data.get("source_representation"), weights)
        kwargs = data.get("intervention_kwargs") or {}
        if not isinstance(kwargs, dict):
            raise LoadError(f"{path}: representation {i}: intervention_kwargs must be a dict, got {kwargs!r}")
        data["intervention_kwargs"] = {
            k: _tensor_ref(path, i, f"intervention_kwargs[{k!r}]", v, weights) for k, v in kwargs.items()
        }
        if isinstance(entry, dict) and "function" in entry:
            name = entry["function"]
            wanted[i] = name
            fn = functions.get(i, functions.get(name))
            if fn is None:
                raise LoadError(
                    f"{path}: representation {i} ({entry.get('key')}) was saved with the plain "
                    f"function {name!r} as its intervention, and code is not saved; give it again: "
                    f"from_pretrained(..., functions={{{name!r}: <function>}}) (or key it by the "
                    f"representation index {i})"
                )
            if not callable(fn):
                raise ConfigError(f"from_pretrained: functions[{name!r}] must be callable, got {fn!r}")
            data["intervention_kwargs"]["fn"] = fn
        try:
            reps.append(RepresentationConfig.from_dict(data))
        except ConfigError as e:
            raise LoadError(f"{path}: representation {i}: {e}") from None
    known = set(wanted) | set(wanted.values())
    unknown = [k for k in functions if k not in known]
    if unknown:
        choices = sorted(map(str, known))
        raise ConfigError(
            f"from_pretrained: functions key {unknown[0]!r} matches no saved function intervention; "
            f"accepted: {accepted(choices) or 'none (this save has no function interventions)'}."
            f"{did_you_mean(str(unknown[0]), choices)}"
        )
    try:
        return IntervenableConfig(reps, mode=doc["intervenable_config"].get("mode", "parallel"))
    except ConfigError as e:
        raise LoadError(f"{path}: {e}") from None


def _tensor_ref(path: Path, i: int, label: str, value, weights: dict):
    if isinstance(value, dict) and set(value) == {_TENSOR_REF}:
        key = value[_TENSOR_REF]
        if key not in weights:
            raise LoadError(
                f"{path}: representation {i}: {label} refers to tensor {key!r}, which "
                f"{WEIGHTS_NAME} does not hold"
            )
        return weights[key]
    return value


def _load_states(folder: Path, doc: dict, weights: dict, im) -> None:
    """Check the file's tensors against what the rebuilt interventions expect, then load them."""
    entries = doc["interventions"]
    referenced = {k for k in weights if k.startswith(("source_representation.", "intervention_kwargs."))}
    expected: dict[str, tuple[Any, str, torch.Tensor]] = {}  # file key -> (slot, state key, tensor)
    plans = []
    seen = set()
    for slot, entry in zip(im._slots, entries):
        iv = slot.intervention
        if id(iv) in seen:
            continue
        seen.add(id(iv))
        entry = entry if isinstance(entry, dict) else {}
        state = iv.state_dict()
        extra = {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
        for name, t in state.items():
            if isinstance(t, torch.Tensor):
                expected[f"intervention.{slot.index}.{name}"] = (slot, name, t)
        saved_extra = entry.get("extra_state") or {}
        if set(saved_extra) != set(extra):
            raise LoadError(
                f"{folder / CONFIG_NAME}: {slot.label} has extra state {sorted(extra)} but the save "
                f"holds {sorted(saved_extra)}; it was saved by a different version of "
                f"{type(iv).__name__}"
            )
        plans.append((slot, iv, saved_extra, entry.get("settings") or {}))
    path = folder / WEIGHTS_NAME
    missing = sorted(set(expected) - set(weights))
    extra_keys = sorted(set(weights) - set(expected) - referenced)
    if missing or extra_keys:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s) the interventions built on this model "
                         f"expect: {', '.join(missing[:5])}")
        if extra_keys:
            parts.append(f"{len(extra_keys)} unexpected tensor(s): {', '.join(extra_keys[:5])}")
        raise LoadError(
            f"{path} does not match {CONFIG_NAME}: {'; '.join(parts)}. Was it saved with another "
            f"config or library version?"
        )
    for key, (slot, _, t) in expected.items():
        got = weights[key]
        if tuple(got.shape) != tuple(t.shape):
            raise LoadError(
                f"{path}: tensor {key!r} has shape {list(got.shape)} but {slot.label}, built on this "
                f"model (site width {slot.site.width}), expects {list(t.shape)}; load onto the base "
                f"model it was saved on"
            )
    for slot, iv, saved_extra, settings in plans:
        state = {name: weights[f"intervention.{slot.index}.{name}"]
                 for name, v in iv.state_dict().items() if isinstance(v, torch.Tensor)}
        state.update(saved_extra)
        with torch.no_grad():
            iv.load_state_dict(state, strict=True)
        for name, value in settings.items():
            setter = getattr(iv, f"set_{name}", None)
            if not callable(setter):
                raise LoadError(
                    f"{folder / CONFIG_NAME}: {slot.label} was saved with setting {name}={value!r} "
                    f"but {type(iv).__name__} has no set_{name}(); it was saved by a different version"
                )
            try:
                setter(value)
            except PyveneLikeError as e:
                raise LoadError(f"{folder / CONFIG_NAME}: {slot.label}: setting {name}: {e}") from None


# -- sharing -------------------------------------------------------------------------------------
def push_to_hub(im, repo_id: str, *, private: bool | None = None, token=None, revision: str | None = None,
                commit_message: str | None = None, create_pr: bool = False, api=None):
    """Save into a temporary folder and upload it to the Hub repo ``repo_id`` (created if needed).

    ``api`` is a :class:`huggingface_hub.HfApi` (one is made with ``token`` when not given).
    Returns what ``upload_folder`` returns (a ``CommitInfo``).
    """
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    url = api.create_repo(repo_id, token=token, private=private, repo_type="model", exist_ok=True)
    repo_id = getattr(url, "repo_id", None) or repo_id
    if revision is not None and not create_pr:
        api.create_branch(repo_id, branch=revision, token=token, repo_type="model", exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pyvene_like-") as tmp:
        save_pretrained(im, tmp, repo_id=repo_id)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=tmp,
            repo_type="model",
            revision=revision,
            token=token,
            create_pr=create_pr,
            commit_message=commit_message or f"Upload pyvene_like {__version__} interventions",
        )
