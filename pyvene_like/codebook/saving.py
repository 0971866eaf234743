"""Save and load only the codebooks of a model, with the base model's identity.

A codebook save is a folder (or Hub repo) of two files:

* ``codebooks.json`` -- library and format versions, the base model's identity
  (:func:`pyvene_like.serialization.model_identity`: Hub id, ``model_type``, a hash of its config)
  and, per codebook, its site (layer, component) and settings (``dim``, ``num_codes``, ``k``,
  ``num_groups``, ``similarity``, ``layer_norm``, ``eps``);
* ``codebooks.safetensors`` -- the codebooks' tensors, named ``<site>.<parameter>``.

The base model's weights are not saved: when ``train_model=True`` changed them, save them with
the model's own ``save_pretrained`` too. :func:`load_codebooks` puts the codebooks into a
model (wrapping it when it has none) and warns when the model is not the one they were saved
on. Files are read and written, and the base model checked, by
:mod:`pyvene_like.serialization`; a Hub repo is fetched by :func:`pyvene_like.hub.resolve_folder`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, LoadError
from ..serialization import (
    LIBRARY,
    check_base_model,
    check_save_folder,
    load_tensors,
    model_identity,
    read_json,
    save_tensors,
    write_json,
)
from ..version import __version__
from .wrap import ATTRIBUTE, get_codebooks, module_key, wrap_codebook

CODEBOOK_CONFIG = "codebooks.json"
CODEBOOK_WEIGHTS = "codebooks.safetensors"
FORMAT_VERSION = 1
_SETTINGS = ("dim", "num_codes", "k", "num_groups", "similarity", "layer_norm", "eps")


def save_codebooks(model: nn.Module, save_directory) -> Path:
    """Write ``codebooks.json`` and ``codebooks.safetensors`` for the codebooks of ``model``."""
    cbs = get_codebooks(model)
    folder = check_save_folder(save_directory, "save_codebooks", CODEBOOK_CONFIG)
    entries, tensors = [], {}
    for name, cs in cbs.sites().items():
        cb = cbs[module_key(name)]
        entries.append({"name": name, "layer": cs.layer, "component": cs.component,
                        **{k: getattr(cb, k) for k in _SETTINGS}})
        for pname, p in cb.named_parameters():
            tensors[f"{name}.{pname}"] = p
    doc = {"library": LIBRARY, "library_version": __version__, "format_version": FORMAT_VERSION,
           "kind": "codebooks", "base_model": model_identity(model), "codebooks": entries}
    folder.mkdir(parents=True, exist_ok=True)
    digest = save_tensors(tensors, folder / CODEBOOK_WEIGHTS)
    doc["weights"] = {"file": CODEBOOK_WEIGHTS, "sha256": digest}
    write_json(folder / CODEBOOK_CONFIG, doc)
    return folder


def _read(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    path, doc = read_json(folder, CODEBOOK_CONFIG, "load_codebooks", "save_codebooks")
    if not isinstance(doc, dict) or doc.get("library") != LIBRARY or doc.get("kind") != "codebooks":
        raise LoadError(f"{path}: not a pyvene_like codebook save (written by save_codebooks)")
    fmt = doc.get("format_version")
    if not isinstance(fmt, int) or not 1 <= fmt <= FORMAT_VERSION:
        raise LoadError(f"{path}: format_version {fmt!r} is not one this pyvene_like reads (1..{FORMAT_VERSION})")
    if not isinstance(doc.get("codebooks"), list) or not doc["codebooks"]:
        raise LoadError(f"{path}: field 'codebooks' must be a non-empty list")
    wpath = folder / CODEBOOK_WEIGHTS
    if not wpath.is_file():
        raise LoadError(f"load_codebooks: {wpath} is missing; copy or download it again")
    tensors = load_tensors(wpath, caller="load_codebooks", sha256=(doc.get("weights") or {}).get("sha256"),
                           recorded_in=CODEBOOK_CONFIG, fix="copy or download it again, or save again")
    return doc, tensors


def load_codebooks(model: nn.Module, path_or_repo_id, *, revision=None, cache_dir=None,
                   local_files_only: bool = False, token=None) -> nn.Module:
    """Load codebooks saved by :func:`save_codebooks` into ``model`` (in place) and return it.

    A model without codebooks is wrapped at the saved sites first; a wrapped model must have
    codebooks at exactly those sites with the same settings. ``path_or_repo_id``: a folder or
    a Hub repo id (fetched with ``huggingface_hub``, from the cache when offline).
    """
    from ..hub import resolve_folder

    if not isinstance(model, nn.Module):
        raise ConfigError(f"load_codebooks: model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(path_or_repo_id, (str, os.PathLike)):
        raise ConfigError(
            f"load_codebooks: expected a folder path or a Hub repo id, got {type(path_or_repo_id).__name__}"
        )
    folder = resolve_folder(path_or_repo_id, revision=revision, cache_dir=cache_dir,
                            local_files_only=local_files_only, token=token,
                            allow_patterns=[CODEBOOK_CONFIG, CODEBOOK_WEIGHTS], what="load_codebooks")
    doc, tensors = _read(folder)
    path = folder / CODEBOOK_CONFIG
    check_base_model(path, doc.get("base_model"), model, what="codebooks", verb="trained",
                     consequence="their codes may mean nothing there", stacklevel=3)
    entries = doc["codebooks"]
    saved_names = [e.get("name") for e in entries]
    if getattr(model, ATTRIBUTE, None) is None:
        for e in entries:
            wrap_codebook(model, [(e["layer"], e["component"])], num_codes=e["num_codes"], k=e["k"],
                          similarity=e["similarity"], layer_norm=e["layer_norm"],
                          num_codebooks=e["num_groups"])
    cbs = get_codebooks(model)
    if sorted(cbs.names()) != sorted(saved_names):
        raise ConfigError(
            f"load_codebooks: the model has codebooks at {cbs.names()} but {path} holds codebooks at "
            f"{saved_names}; unwrap the model (unwrap_codebook) or wrap it at the saved sites"
        )
    for e in entries:
        cb = cbs[module_key(e["name"])]
        for key in _SETTINGS:
            if key in e and getattr(cb, key) != e[key]:
                raise ConfigError(
                    f"load_codebooks: codebook {e['name']}: saved with {key}={e[key]!r}, but the model's "
                    f"codebook has {key}={getattr(cb, key)!r}"
                )
        with torch.no_grad():
            for pname, p in cb.named_parameters():
                key = f"{e['name']}.{pname}"
                if key not in tensors:
                    raise LoadError(f"{folder / CODEBOOK_WEIGHTS}: tensor {key!r} is missing")
                t = tensors[key]
                if t.shape != p.shape:
                    raise LoadError(
                        f"{folder / CODEBOOK_WEIGHTS}: tensor {key!r} has shape {tuple(t.shape)}, the "
                        f"codebook expects {tuple(p.shape)}"
                    )
                p.copy_(t.to(device=p.device, dtype=p.dtype))
    return model
