"""Files on disk: the base model's identity, JSON + safetensors with their checks, and the
intervention save layout. No Hub access here (that is :mod:`pyvene_like.hub`) and no import of
:mod:`pyvene_like.model` (the model class is passed in where one must be built).

**Identity.** :func:`model_identity` names the base model by ``model_type`` and a sha256 of its
config (of its parameter shapes for a plain ``nn.Module``), plus its Hub id when it has one;
a local filesystem path is never written. :func:`check_base_model` warns when a save is loaded
onto another model (interventions and codebooks use it alike).

**Files.** :func:`write_json` / :func:`read_json` and :func:`save_tensors` / :func:`load_tensors`
(safetensors only, never pickle; a sha256 recorded at save time is checked at load time) turn
every failure into a :class:`~pyvene_like.LoadError` naming the file and the fix.

**Interventions** (what ``IntervenableModel.save_pretrained`` writes):

* ``config.json`` -- the :class:`~pyvene_like.IntervenableConfig` with interventions named by
  their registry names, the library and file-format versions, the base model's identity and,
  per intervention, its tensors' names and its settings: ``Intervention.get_config()``;
* ``interventions.safetensors`` -- every tensor (intervention parameters and buffers, given
  source representations, tensor ``intervention_kwargs``).

An intervention is rebuilt from ``type(iv).from_config(iv.get_config())`` and its
``state_dict()`` (torch's JSON extra state included). For a parametrised weight (the rotations,
kept orthonormal by ``torch.nn.utils.parametrize``) the state is the unconstrained tensor and the
parametrization's buffers, from which the same effective weight is computed bit for bit.
An intervention given as a plain Python function is saved by name only, since code is not
data: ``from_pretrained(..., functions={"fn_name": fn})`` gives it back.

**Checkpoints** (a training run's state): :func:`write_checkpoint` / :func:`read_checkpoint`,
``checkpoint.json`` plus one ``checkpoint-<group>.safetensors`` per group of tensors; the names
never collide with a ``save_pretrained`` folder's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import IntervenableConfig, LambdaFactory, RepresentationConfig
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
from .validation import check_path, is_int
from .version import __version__

LIBRARY = "pyvene_like"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "interventions.safetensors"
CARD_NAME = "README.md"
CHECKPOINT_STATE = "checkpoint.json"
#: Layout of config.json / interventions.safetensors; bumped only when old readers would misread.
FORMAT_VERSION = 1
CHECKPOINT_FORMAT_VERSION = 1
_TENSOR_REF = "__safetensors__"  # {"__safetensors__": key} stands for a tensor in the weights file
# Config entries that say how a model is run, not what it is: left out of the identity hash.
_VOLATILE_CONFIG_KEYS = frozenset(
    {"transformers_version", "architectures", "dtype", "torch_dtype", "use_cache", "return_dict",
     "output_attentions", "output_hidden_states", "torchscript"}
)
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_GROUP = re.compile(r"^[A-Za-z0-9_-]+$")


# -- the base model's identity ---------------------------------------------------------------
def hub_model_id(name: str | None) -> str | None:
    """``name`` when it reads as a Hub repo id, ``None`` for a local path (or nothing)."""
    if not name or os.path.isabs(name) or os.path.exists(name) or not _REPO_ID.match(name):
        return None
    return name


def model_identity(model: nn.Module) -> dict:
    """``name_or_path``, ``model_type``, ``class``, ``config_hash`` and ``hash_of`` of a model.

    ``name_or_path`` is the model's Hub id (``config._name_or_path``) when it has one and
    ``None`` otherwise: a local path says nothing on another machine, so it is never recorded.
    For a transformers model the hash is the sha256 of its config (without the entries that only
    say how it runs: dtype, ``use_cache``, versions, private ``_`` keys); for a plain
    ``nn.Module`` it is the sha256 of its parameter names and shapes.
    """
    cfg = getattr(model, "config", None)
    if cfg is not None and callable(getattr(cfg, "to_dict", None)):
        data = _stable(cfg.to_dict())
        names = (getattr(model, "name_or_path", None), getattr(cfg, "_name_or_path", None))
        name = next((hub_model_id(str(n)) for n in names if n and hub_model_id(str(n))), None)
        model_type = getattr(cfg, "model_type", None) or None
        hashed = "config"
    else:
        data = [[n, list(p.shape)] for n, p in model.named_parameters()]
        name, model_type, hashed = None, None, "parameter_shapes"
    digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
    return {
        "name_or_path": name,
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


def check_base_model(path: str | os.PathLike, saved: object, model: nn.Module, *, what: str = "interventions", verb: str = "saved",
                     consequence: str = "layers, components and widths may not mean the same thing",
                     stacklevel: int = 4) -> None:
    """Warn when ``model`` is not the base model ``saved`` (a :func:`model_identity`) describes.

    Same ``model_type`` and config hash: silent. ``what`` / ``verb`` / ``consequence`` fill the
    message ("these codebooks were trained on ...; ... so their codes may mean nothing there").
    A ``saved`` that is not a dict is a :class:`LoadError`.
    """
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

    differs = "model_type" if not same_type else "config"
    warnings.warn(
        f"{path}: these {what} were {verb} on base model {show(saved)} but are being loaded onto "
        f"{show(now)}; the {differs} differs, so {consequence}. Pass the model they were {verb} on",
        PyveneLikeWarning,
        stacklevel=stacklevel,
    )


# -- JSON ----------------------------------------------------------------------------------------
def check_json(value: object, label: str, caller: str = "save_pretrained") -> None:
    """A :class:`ConfigError` unless ``value`` survives a JSON round trip unchanged."""
    try:
        same = json.loads(json.dumps(value)) == value
    except (TypeError, ValueError):
        same = False
    if not same:
        raise ConfigError(
            f"{caller}: {label} is {value!r} ({type(value).__name__}), which config.json "
            f"cannot hold as it is; use strings, numbers, booleans, None, lists and dicts of them "
            f"(tuples come back as lists), or tensors"
        )


def write_json(path: str | os.PathLike, doc: Any) -> Path:
    path = Path(path)
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return path


def read_json(folder: Path, name: str, caller: str, writer: str) -> tuple[Path, object]:
    """``folder/name`` parsed as JSON, or a LoadError saying what the folder holds instead."""
    folder = Path(folder)
    path = folder / name
    if not path.is_file():
        present = sorted(p.name for p in folder.iterdir())[:10] if folder.is_dir() else []
        raise LoadError(
            f"{caller}: {str(folder)!r} has no {name} (it holds: "
            f"{', '.join(present) or 'nothing'}); give a folder written by {writer}"
        )
    try:
        return path, json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LoadError(f"{path}: not valid JSON ({e})") from None


def is_library_json(path: Path) -> bool:
    """True when ``path`` is a JSON file this library wrote (field ``library``)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8")).get("library") == LIBRARY
    except (OSError, ValueError, AttributeError):
        return False


def check_versions(path: Path, doc: dict, *, format_version: int = FORMAT_VERSION, stacklevel: int = 6) -> None:
    """Warn on a file from a newer library; refuse a ``format_version`` this one cannot read."""
    version = doc.get("library_version")
    if _newer(version, __version__):
        warnings.warn(
            f"{path}: saved by pyvene_like {version}, newer than this pyvene_like {__version__}; "
            f"settings it added may be missing or rejected here: upgrade pyvene_like",
            PyveneLikeWarning,
            stacklevel=stacklevel,
        )
    fmt = doc.get("format_version")
    if not is_int(fmt) or fmt < 1:
        raise LoadError(f"{path}: format_version {fmt!r} is not valid; accepted: 1..{format_version}")
    if fmt > format_version:
        raise LoadError(
            f"{path}: format_version {fmt} is newer than the {format_version} this pyvene_like "
            f"{__version__} reads (written by pyvene_like {version}); upgrade pyvene_like"
        )


def _newer(saved, ours) -> bool:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(str(saved)) > Version(ours)
    except InvalidVersion:
        return False


# -- safetensors ----------------------------------------------------------------------------------
def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


class TensorDict(dict):
    """Tensors bound for safetensors: on the CPU, contiguous, and copied when their memory is
    already used by another entry (safetensors refuses shared memory: tied or reused tensors)."""

    def __init__(self, tensors: dict | None = None):
        super().__init__()
        self._storages: set[int] = set()
        for k, v in (tensors or {}).items():
            self[k] = v

    def __setitem__(self, key, t: torch.Tensor):
        t = t.detach().to("cpu").contiguous()
        if t.numel() and t.untyped_storage().data_ptr() in self._storages:
            t = t.clone()
        if t.numel():
            self._storages.add(t.untyped_storage().data_ptr())
        super().__setitem__(key, t)


def save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, *, metadata: dict | None = None) -> str:
    """Write ``tensors`` to a safetensors file (shared memory copied); returns its sha256."""
    from safetensors.torch import save_file

    meta = {"format": "pt", "library": LIBRARY, **(metadata or {})}
    save_file(dict(TensorDict(tensors)), str(path), metadata={k: str(v) for k, v in meta.items()})
    return sha256_file(path)


def load_tensors(path: str | os.PathLike, *, caller: str, sha256: str | None = None, recorded_in: str = CONFIG_NAME,
                 fix: str = "copy or download it again, or save again") -> dict[str, torch.Tensor]:
    """Read a safetensors file; :class:`LoadError` when it is missing, truncated or altered
    (``sha256``: the digest recorded at save time in ``recorded_in``)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise LoadError(f"{caller}: {path} is missing; {fix}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise LoadError(f"{path} is not a readable safetensors file (truncated or corrupt: {e}); {fix}") from None
    if sha256 is not None and sha256 != sha256_file(path):
        raise LoadError(
            f"{path} does not match the sha256 recorded in {recorded_in} ({sha256[:19]}...): it "
            f"was corrupted or replaced after saving; {fix}"
        )
    return tensors


# -- interventions: saving ---------------------------------------------------------------------
@dataclasses.dataclass
class _Entry:
    """What the save needs of one compiled intervention, from IntervenableModel's public view."""

    index: int
    key: str
    rep: RepresentationConfig
    intervention: Intervention
    width: int | None

    @property
    def label(self) -> str:
        return f"intervention {self.index} ({type(self.intervention).__name__} at {self.key})"


def _entries(im) -> list[_Entry]:
    reps = im.config.representations
    return [_Entry(i, key, rep, iv, getattr(site, "width", None))
            for i, (key, rep, iv, site) in enumerate(zip(im.intervention_keys, reps, im.interventions, im.sites))]


def intervention_config(iv: Intervention, label: str) -> dict:
    """``iv.get_config()``, checked to be a JSON dict."""
    get = getattr(iv, "get_config", None)
    if not callable(get):
        raise ConfigError(f"save_pretrained: {label}: {type(iv).__qualname__} has no get_config()")
    config = get()
    if not isinstance(config, dict):
        raise ConfigError(
            f"save_pretrained: {label}: {type(iv).__qualname__}.get_config() must return a dict of "
            f"constructor arguments, got {type(config).__name__}"
        )
    check_json(config, f"{label}: {type(iv).__qualname__}.get_config()")
    return config


def describe(im: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """The JSON document and the tensors that :func:`write_interventions` writes."""
    tensors = TensorDict()
    reps, entries, functions = [], [], []
    owner: dict[int, int] = {}  # id(intervention) -> index of the first slot holding it
    for e in _entries(im):
        i, iv = e.index, e.intervention
        rep_dict, function = _representation_dict(e, tensors)
        reps.append(rep_dict)
        entry: dict[str, Any] = {"key": e.key, "class": type(iv).__name__}
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
            if function is None:
                entry["config"] = intervention_config(iv, f"representation {i}")
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
            stacklevel=5,
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


def _representation_dict(e: _Entry, tensors: dict) -> tuple[dict, str | None]:
    """The JSON form of a representation, its intervention named by type; tensors go to ``tensors``."""
    i, rep = e.index, e.rep
    cls, kwargs, function = _intervention_spec(e)
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
        check_json(value, f"representation {i}: {name}")
    return out, function


def _intervention_spec(e: _Entry):
    """(registered class, constructor kwargs, function name or None) that rebuild ``e``'s intervention."""
    i, rep, iv = e.index, e.rep, e.intervention
    # Modules given in intervention_kwargs (an SAE) are not JSON: such an intervention is saved
    # as an instance is, by its get_config() (e.g. sae_config) and its state dict.
    built_from_modules = any(isinstance(v, nn.Module) for v in rep.intervention_kwargs.values())
    if rep.intervention is None and not built_from_modules:
        factory = rep.intervention_type
        kwargs = dict(rep.intervention_kwargs)
        if isinstance(factory, LambdaFactory):
            return LambdaIntervention, kwargs, _function_name(factory.fn)
        if factory is LambdaIntervention:
            return LambdaIntervention, kwargs, _function_name(kwargs.pop("fn", iv.fn))
        _registered(i, factory)
        return factory, kwargs, None
    # An instance: rebuilt from its registered name and its get_config().
    cls = type(iv)
    if isinstance(iv, LambdaIntervention):
        return LambdaIntervention, {"needs_source": iv.source_from is not None}, _function_name(iv.fn)
    _registered(i, cls)
    config = intervention_config(iv, f"representation {i}")
    hint = (f"give intervention_type={cls.registry_name!r} and intervention_kwargs in the "
            f"RepresentationConfig instead of intervention=, or make {cls.__name__}.get_config() "
            f"return every constructor argument")
    try:
        probe = cls.from_config(config)
    except (PyveneLikeError, TypeError, ValueError) as err:
        raise ConfigError(
            f"save_pretrained: representation {i} holds a {cls.__name__} instance that "
            f"{cls.__name__}.from_config({config}) cannot rebuild ({err}); {hint}"
        ) from err
    if _as_json(probe.get_config()) != _as_json(config):
        raise ConfigError(
            f"save_pretrained: representation {i} holds a {cls.__name__} instance that "
            f"from_config(get_config()) does not reproduce ({probe.get_config()} != {config}); {hint}"
        )
    return cls, config, None


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
            check_json(value, f"representation {i}: the extra state {name!r} of {type(iv).__name__}")
            extra[name] = value
    return tensors, extra


def _as_json(value):
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return value


def check_save_folder(folder: str | os.PathLike, caller: str = "save_pretrained", config_name: str = CONFIG_NAME) -> Path:
    """``folder`` as a Path; a ConfigError when it is not a path, is a file or holds another
    library's config."""
    folder = check_path(folder, f"{caller}: save_directory")
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{caller}: {str(folder)!r} is a file; give a directory")
    config_path = folder / config_name
    if config_path.is_file() and not is_library_json(config_path):
        raise ConfigError(
            f"{caller}: {str(folder)!r} already holds a {config_name} that is not a "
            f"pyvene_like save (a model's own config?); save into another directory"
        )
    return folder


def make_folder(folder: Path, caller: str) -> None:
    """``mkdir -p`` that reports a folder it cannot create (a read-only or missing parent, a
    file on the way) as a ConfigError naming it, before anything is written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{caller}: cannot create the folder {str(folder)!r}: {e.strerror or e}") from None


def write_interventions(im: nn.Module, save_directory: str | os.PathLike) -> tuple[Path, dict]:
    """Write ``config.json`` and ``interventions.safetensors``; returns the folder and the document."""
    folder = check_save_folder(save_directory)
    doc, tensors = describe(im)
    make_folder(folder, "save_pretrained")
    digest = save_tensors(tensors, folder / WEIGHTS_NAME, metadata={"format_version": FORMAT_VERSION})
    doc["weights"] = {"file": WEIGHTS_NAME, "sha256": digest}
    write_json(folder / CONFIG_NAME, doc)
    return folder, doc


# -- interventions: loading --------------------------------------------------------------------
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
    check_versions(path, doc)
    for field in ("intervenable_config", "interventions", "base_model"):
        if field not in doc:
            raise LoadError(f"{path}: field {field!r} is missing; the file is incomplete")
    _expect(path, "intervenable_config", doc["intervenable_config"], dict, "a dict")
    reps, entries = doc["intervenable_config"].get("representations"), doc["interventions"]
    if not isinstance(reps, list) or not isinstance(entries, list) or len(reps) != len(entries):
        raise LoadError(
            f"{path}: 'intervenable_config.representations' and 'interventions' must be lists of "
            f"the same length, got {type(reps).__name__} and {type(entries).__name__}"
        )
    mode = doc["intervenable_config"].get("mode", "parallel")
    _expect(path, "intervenable_config.mode", mode, str, "a string ('parallel' or 'serial')")
    weights = doc.get("weights")
    if weights is not None:
        _expect(path, "weights", weights, dict, "a dict (with the weights file's 'sha256')")
        if "sha256" in weights:
            _expect(path, "weights.sha256", weights["sha256"], str, "a hex digest string")
    for i, entry in enumerate(entries):
        where = f"interventions[{i}]"
        _expect(path, where, entry, dict, "a dict (key, class, tensors, config)")
        for name, kinds, what in _ENTRY_FIELDS:
            if name in entry:
                _expect(path, f"{where}.{name}", entry[name], kinds, what)
        if "tensors" in entry and not all(isinstance(k, str) for k in entry["tensors"]):
            raise LoadError(f"{path}: field '{where}.tensors' must be a list of tensor names, got "
                            f"{entry['tensors']!r}")
        if "shares_with" in entry and not (
                is_int(entry["shares_with"]) and 0 <= entry["shares_with"] < i):
            raise LoadError(f"{path}: field '{where}.shares_with' must be the index of an earlier "
                            f"intervention (0..{i - 1}), got {entry['shares_with']!r}")
    return doc


# Fields of an ``interventions[i]`` entry: name, accepted type(s), what the error says is accepted.
_ENTRY_FIELDS = (
    ("key", str, "a string"),
    ("class", str, "a string"),
    ("function", str, "the saved function's name (a string)"),
    ("tensors", list, "a list of tensor names"),
    ("config", dict, "a dict of constructor arguments (get_config())"),
    ("settings", dict, "a dict of settings"),
    ("extra_state", dict, "a dict {state name: JSON value}"),
)


def _expect(path, field: str, value, kinds, what: str) -> None:
    """A LoadError naming ``path``, the field, the value's type and what is accepted."""
    if not isinstance(value, kinds):
        shown = repr(value)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise LoadError(
            f"{path}: field {field!r} must be {what}, got {type(value).__name__} {shown}"
        )


def read_weights(folder: Path, doc: dict) -> dict[str, torch.Tensor]:
    """Load ``interventions.safetensors``; clear errors when it is missing, truncated or altered."""
    path = Path(folder) / WEIGHTS_NAME
    if not path.is_file():
        n = sum(len(e.get("tensors", ())) for e in doc["interventions"] if isinstance(e, dict))
        raise LoadError(
            f"from_pretrained: {path} is missing; {CONFIG_NAME} expects it to hold {n} "
            f"intervention tensor(s). Copy or download it again, or save again with save_pretrained"
        )
    return load_tensors(path, caller="from_pretrained", sha256=(doc.get("weights") or {}).get("sha256"),
                        fix="copy or download it again, or save again with save_pretrained")


def load_interventions(folder: str | os.PathLike, model: nn.Module, *, cls: type[nn.Module],
                       functions: dict | None = None) -> nn.Module:
    """Rebuild an IntervenableModel (``cls``) on ``model`` from a folder written by
    :func:`write_interventions`: check the files and the base model, rebuild the config, build,
    and load every intervention's settings (``from_config``) and state."""
    folder = check_path(folder, "from_pretrained: path_or_repo_id")
    if functions is not None and not isinstance(functions, dict):
        raise ConfigError(
            f"from_pretrained: functions must be a dict {{saved function name or representation "
            f"index: function}}, got {type(functions).__name__}"
        )
    doc = read_config(folder)
    path = folder / CONFIG_NAME
    check_base_model(path, doc["base_model"], model, stacklevel=5)
    weights = read_weights(folder, doc)
    config = _rebuild_config(path, doc, weights, functions or {})
    im = _build(cls, config, model, path)
    _check_tensors(folder, doc, weights, im)
    _check_source_representations(folder, im)
    # Settings changed after construction (RotatedSpaceIntervention.set_interchange_dim, ...):
    # the saved get_config() differs from the one the config builds; those interventions are
    # built again from the saved settings with from_config.
    rebuilt = _from_saved_configs(path, doc, im)
    if rebuilt:
        reps = [dataclasses.replace(rep, intervention=rebuilt[i]) if i in rebuilt else rep
                for i, rep in enumerate(config.representations)]
        im = _build(cls, IntervenableConfig(reps, mode=config.mode), model, path)
        _check_tensors(folder, doc, weights, im)
    _load_states(folder, doc, weights, im)
    return im


def _build(cls, config, model, path):
    try:
        return cls(config, model)
    except PyveneLikeError as e:
        # A LoadError (it is the file that is wrong for this model); the cause stays chained.
        raise LoadError(f"{path} does not fit this model ({type(e).__name__}): {e}") from e


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
        if not isinstance(key, str):
            raise LoadError(
                f"{path}: representation {i}: {label} must name a tensor of {WEIGHTS_NAME} "
                f"({{{_TENSOR_REF!r}: <tensor name>}}), got {key!r}"
            )
        if key not in weights:
            raise LoadError(
                f"{path}: representation {i}: {label} refers to tensor {key!r}, which "
                f"{WEIGHTS_NAME} does not hold"
            )
        return weights[key]
    return value


def _unique(im, doc) -> list[tuple[_Entry, dict]]:
    """(entry, saved entry) for each intervention once (linked ones share the first)."""
    seen, out = set(), []
    for e, saved in zip(_entries(im), doc["interventions"]):
        if id(e.intervention) in seen:
            continue
        seen.add(id(e.intervention))
        out.append((e, saved if isinstance(saved, dict) else {}))
    return out


def _from_saved_configs(path: Path, doc: dict, im) -> dict[int, Intervention]:
    """Interventions whose saved settings differ from the built ones, rebuilt with from_config."""
    out = {}
    for e, saved in _unique(im, doc):
        iv = e.intervention
        if "function" in saved or not ("config" in saved or "settings" in saved):
            continue
        built = _as_json(iv.get_config())
        if "config" in saved:
            wanted = saved["config"]
            if not isinstance(wanted, dict):
                raise LoadError(f"{path}: {e.label}: field 'config' must be a dict, got {wanted!r}")
        else:  # format 1 before get_config(): settings changed after construction, by name
            wanted = dict(built)
            for name, value in (saved["settings"] or {}).items():
                if name not in built:
                    raise LoadError(
                        f"{path}: {e.label} was saved with setting {name}={value!r} but "
                        f"{type(iv).__name__}.get_config() has no {name!r} (accepted: "
                        f"{accepted(sorted(built))}); it was saved by a different version"
                    )
                wanted[name] = value
        if (not getattr(iv, "checks_width", True) and "embed_dim" in wanted
                and wanted.get("embed_dim") != built.get("embed_dim")):
            # A type that holds nothing of the width's shape takes the width of the site it is
            # loaded on (another base model was warned about above); the rest is as saved.
            wanted = {**wanted, "embed_dim": built.get("embed_dim")}
        if wanted == built:
            continue
        try:
            out[e.index] = type(iv).from_config(wanted)
        except (PyveneLikeError, TypeError, ValueError) as err:
            raise LoadError(
                f"{path}: {e.label}: {type(iv).__name__}.from_config({wanted}) failed: {err}"
            ) from None
    return out


def _check_tensors(folder: Path, doc: dict, weights: dict, im) -> None:
    """The file's tensors against what the built interventions expect: names, extra states, shapes."""
    referenced = {k for k in weights if k.startswith(("source_representation.", "intervention_kwargs."))}
    expected: dict[str, tuple[_Entry, torch.Tensor]] = {}
    for e, saved in _unique(im, doc):
        state = e.intervention.state_dict()
        extra = {k for k, v in state.items() if not isinstance(v, torch.Tensor)}
        saved_extra = saved.get("extra_state") or {}
        if set(saved_extra) != extra:
            raise LoadError(
                f"{folder / CONFIG_NAME}: {e.label} has extra state {sorted(extra)} but the save "
                f"holds {sorted(saved_extra)}; it was saved by a different version of "
                f"{type(e.intervention).__name__}"
            )
        for name, t in state.items():
            if isinstance(t, torch.Tensor):
                expected[f"intervention.{e.index}.{name}"] = (e, t)
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
    for key, (e, t) in expected.items():
        got = weights[key]
        if got.dtype != t.dtype:
            kind = "floating-point " if t.dtype.is_floating_point else ""
            raise LoadError(
                f"{path}: tensor {key!r} has dtype {got.dtype}; accepted: {kind}{t.dtype}, the dtype "
                f"{e.label} holds it in (save_pretrained writes it so; nothing is cast on load)"
            )
        if tuple(got.shape) != tuple(t.shape):
            raise LoadError(
                f"{path}: tensor {key!r} has shape {list(got.shape)} but {e.label}, built on this "
                f"model (site width {e.width}), expects {list(t.shape)}; load onto the base "
                f"model it was saved on"
            )


def _check_source_representations(folder: Path, im) -> None:
    """A loaded ``source_representation`` must end in the width its intervention works on."""
    for e in _entries(im):
        t, width = e.rep.source_representation, getattr(e.intervention, "embed_dim", None)
        if t is not None and width is not None and (t.dim() == 0 or t.shape[-1] != width):
            raise LoadError(
                f"{folder / WEIGHTS_NAME}: tensor 'source_representation.{e.index}' has shape "
                f"{list(t.shape)} but {e.label} works on units of width {width}; accepted: a tensor "
                f"whose last dimension is {width}"
            )


def _load_states(folder: Path, doc: dict, weights: dict, im) -> None:
    for e, saved in _unique(im, doc):
        iv = e.intervention
        state = {name: weights[f"intervention.{e.index}.{name}"]
                 for name, v in iv.state_dict().items() if isinstance(v, torch.Tensor)}
        state.update(saved.get("extra_state") or {})
        with torch.no_grad():
            iv.load_state_dict(state, strict=True)


# -- checkpoints -------------------------------------------------------------------------------
def _checkpoint_file(group: str) -> str:
    return f"checkpoint-{group}.safetensors"


def _plain(value):
    """JSON ``default=``: 0-d tensors and numpy scalars as Python numbers."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def write_checkpoint(folder: str | os.PathLike, tensors: dict[str, dict[str, torch.Tensor]], state: dict) -> Path:
    """Write a training checkpoint: ``checkpoint.json`` (``state``, JSON; 0-d tensors become
    numbers) and one ``checkpoint-<group>.safetensors`` per entry of ``tensors`` (e.g.
    ``{"interventions": im.interventions.state_dict(), "optimizer": {...}}``). A tensor that is
    the same memory as an earlier one of its group (linked interventions) is stored once and
    named as an alias. The sha256 of each tensor file is recorded. Returns the folder."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"save_checkpoint: {str(folder)!r} is a file; give a directory")
    bad = [g for g in tensors if not isinstance(g, str) or not _GROUP.match(g)]
    if bad:
        raise ConfigError(f"save_checkpoint: tensor group name {bad[0]!r} must be letters, digits, '_' or '-'")
    try:
        text = json.dumps(state, indent=1, default=_plain)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"save_checkpoint: the state cannot be written as JSON: {e}") from None
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for group, named in tensors.items():
        unique, aliases, seen = {}, {}, {}
        for key, t in named.items():
            view = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()),
                    t.dtype, t.device) if t.numel() else None
            if view is not None and view in seen:
                aliases[key] = seen[view]
            else:
                unique[key] = t
                if view is not None:
                    seen[view] = key
        name = _checkpoint_file(group)
        files[group] = {"file": name, "sha256": save_tensors(unique, folder / name, metadata={"kind": "checkpoint"})}
        if aliases:
            files[group]["aliases"] = aliases
    doc = {"library": LIBRARY, "library_version": __version__, "kind": "checkpoint",
           "format_version": CHECKPOINT_FORMAT_VERSION, "tensors": files, "state": json.loads(text)}
    write_json(folder / CHECKPOINT_STATE, doc)
    return folder


def read_checkpoint(folder: str | os.PathLike, groups: Iterable[str] | None = None) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """Read what :func:`write_checkpoint` wrote: ``({group: {name: tensor}}, state)``.

    ``groups``: the tensor groups the caller needs (default: all there are). A folder that lacks
    a file says which ("lacks [...]"); a file that cannot be read, is truncated, or differs from
    the sha256 recorded at save time says so ("cannot read ..."): both :class:`LoadError`."""
    caller = "resume_from_checkpoint"
    folder = Path(folder)
    if not folder.is_dir():
        raise LoadError(f"{caller}: {str(folder)!r} is not a folder; expected a folder written by save_checkpoint")
    path = folder / CHECKPOINT_STATE
    if not path.is_file():
        lacks = [CHECKPOINT_STATE] + [_checkpoint_file(g) for g in groups or ()
                                      if not (folder / _checkpoint_file(g)).is_file()]
        raise LoadError(f"{caller}: {str(folder)!r} lacks {lacks}; expected a folder written by save_checkpoint")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LoadError(f"{caller}: cannot read {str(path)!r}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("library") != LIBRARY or doc.get("kind") != "checkpoint":
        raise LoadError(f"{caller}: cannot read {str(path)!r}: not a pyvene_like training checkpoint "
                        f"(written by save_checkpoint)")
    check_versions(path, doc, format_version=CHECKPOINT_FORMAT_VERSION)
    files = doc.get("tensors")
    if not isinstance(files, dict) or not isinstance(doc.get("state"), dict) or not all(
        isinstance(info, dict) and isinstance(info.get("file"), str) for info in files.values()
    ):
        raise LoadError(f"{caller}: cannot read {str(path)!r}: fields 'tensors' and 'state' are incomplete")
    for group, info in files.items():
        name, digest, aliases = info["file"], info.get("sha256"), info.get("aliases")
        if name != Path(name).name or name in ("", ".", "..") or "\\" in name:
            # save_checkpoint writes a plain file name; a path would read a file outside the folder
            raise LoadError(f"{caller}: cannot read {str(path)!r}: tensor group {group!r} names the file "
                            f"{name!r}; accepted: a file name inside the checkpoint folder")
        if digest is not None and not isinstance(digest, str):
            raise LoadError(f"{caller}: cannot read {str(path)!r}: the sha256 of tensor group {group!r} is "
                            f"{digest!r}; accepted: a 'sha256:<hex>' string")
        if aliases is not None and not (isinstance(aliases, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in aliases.items())):
            raise LoadError(f"{caller}: cannot read {str(path)!r}: the aliases of tensor group {group!r} are "
                            f"{aliases!r}; accepted: a dict of tensor name -> stored tensor name")
    wanted = list(files) if groups is None else list(groups)
    absent = [g for g in wanted if g not in files]
    if absent:
        raise LoadError(
            f"{caller}: {path} has no tensor group {absent[0]!r}; the checkpoint holds "
            f"{accepted(sorted(files)) or 'none'}"
        )
    lacks = [files[g]["file"] for g in wanted if not (folder / files[g]["file"]).is_file()]
    if lacks:
        raise LoadError(f"{caller}: {str(folder)!r} lacks {lacks}; expected a folder written by save_checkpoint")
    out = {}
    for group in wanted:
        info = files[group]
        try:
            named = load_tensors(folder / info["file"], caller=caller, sha256=info.get("sha256"),
                                 recorded_in=CHECKPOINT_STATE, fix="the checkpoint is damaged; resume from another one")
        except LoadError as e:
            raise LoadError(f"{caller}: cannot read the checkpoint in {str(folder)!r}: {e}") from None
        for alias, key in (info.get("aliases") or {}).items():
            if key not in named:
                raise LoadError(f"{caller}: cannot read {str(path)!r}: alias {alias!r} names the absent tensor {key!r}")
            named[alias] = named[key]
        out[group] = named
    return out, doc["state"]
