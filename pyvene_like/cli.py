"""``pyvene-like`` command line: what the library resolves on a model, what a saved folder
holds, and the browser app.

Exit status: 0 done; 1 a user mistake the library reports (a bad path, a layer the model lacks,
a corrupt file), one line on stderr ``pyvene-like: error: ...``; 2 a usage error (argparse);
3 a missing optional dependency (``serve`` without the ``app`` extra).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_MISSING_EXTRA = 0, 1, 2, 3


class MissingExtra(Exception):
    """An optional dependency the command needs is not installed."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; a user mistake is one line on stderr (``pyvene-like: error: ...``, the
    library error's message) and exit status 1; a missing optional dependency, status 3."""
    from .errors import PyveneLikeError

    try:
        return _main(argv)
    except PyveneLikeError as e:
        message = " ".join(str(e).split())  # one line
        print(f"pyvene-like: error: {message}", file=sys.stderr)
        return EXIT_ERROR
    except MissingExtra as e:
        print(f"pyvene-like: error: {e}", file=sys.stderr)
        return EXIT_MISSING_EXTRA


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a non-negative int, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative int, got {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number in 0..65535, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number in 0..65535, got {text!r}")
    return value


def _load_model(name: str):
    """``AutoModel.from_pretrained(name)``, its failures as one LoadError."""
    from transformers import AutoModel

    from .errors import LoadError

    try:
        return AutoModel.from_pretrained(name)
    except Exception as e:  # noqa: BLE001 - transformers raises OSError, ValueError, HF errors...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise LoadError(
            f"sites: cannot load a model from {name!r} ({type(e).__name__}: {first}); give a local "
            f"folder written by save_pretrained or a Hub model id"
        ) from None


def sites_table(model, layer: int) -> dict[str, dict]:
    """Every component at ``layer``: the module it hooks, its width and, for head components, the
    number of heads and their width; components the model lacks say why."""
    from .errors import SiteError
    from .sites import COMPONENTS, ModelLayout, resolve_site

    layout = ModelLayout(model)
    # The layer itself must exist: checked on the residual stream, so "--layer 99" is an
    # error rather than a table of "unavailable" rows.
    resolve_site(layout, layer, "block_output", "pos")
    rows = {}
    for comp in COMPONENTS:
        unit = "h" if comp.startswith("head_") else "pos"
        try:
            site = resolve_site(layout, layer, comp, unit)
        except SiteError as e:
            rows[comp] = {"site": None, "unavailable": " ".join(str(e).split())}
            continue
        rows[comp] = {"site": site.description, "width": site.width, "heads": site.n_heads,
                      "head_dim": site.head_dim}
    return rows


def _print_sites(rows: dict[str, dict]) -> None:
    width = max(len(c) for c in rows)
    print(f"{'component':{width}s}  {'width':>6s}  {'heads':>5s}  {'head_dim':>8s}  site")
    for comp, row in rows.items():
        if row["site"] is None:
            print(f"{comp:{width}s}  {'-':>6s}  {'-':>5s}  {'-':>8s}  unavailable: {row['unavailable']}")
            continue
        cells = ["-" if row[k] is None else str(row[k]) for k in ("width", "heads", "head_dim")]
        print(f"{comp:{width}s}  {cells[0]:>6s}  {cells[1]:>5s}  {cells[2]:>8s}  {row['site']}")


def folder_info(path: str) -> dict:
    """What a saved folder holds: its kind (``interventions``, ``codebooks``, ``records``,
    ``sae``, ``patching``, ``model``, ``prompts``) and the facts a user checks before loading it."""
    from .app.workspace import folder_kind
    from .errors import LoadError

    folder = Path(path)
    if not folder.exists():
        raise LoadError(f"info: {path!r} does not exist")
    kind = folder_kind(folder)
    if kind is None:
        holds = sorted(p.name for p in folder.iterdir())[:10] if folder.is_dir() else []
        raise LoadError(
            f"info: {path!r} is not a folder this library wrote (it holds: {', '.join(holds) or 'nothing'}); "
            f"accepted: save_pretrained (interventions), save_codebooks, CodeRecords.save_to_disk, an SAE "
            f"folder (cfg.json + sae_weights.safetensors), PatchingResult.save, a model folder, a .txt prompt file"
        )
    return {"kind": kind, "path": str(folder), **_INFO[kind](folder)}


def _json_file(path: Path) -> dict:
    from .errors import LoadError

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LoadError(f"info: {path} is not readable JSON ({e})") from None
    if not isinstance(doc, dict):
        raise LoadError(f"info: {path} must hold a JSON object, got {type(doc).__name__}")
    return doc


def _field(doc: dict, key: str, kind: type, where: Path):
    """``doc[key]`` (an empty ``kind`` when absent) when it is a ``kind``; otherwise a LoadError."""
    from .errors import LoadError

    value = doc.get(key)
    if value is None and key not in doc:
        return kind()
    if not isinstance(value, kind):
        noun = {dict: "a JSON object", list: "a JSON list"}[kind]
        raise LoadError(f"info: {where}: {key!r} must be {noun}, got {value!r}"[:300])
    return value


def _info_interventions(folder: Path) -> dict:
    from .serialization import CONFIG_NAME, read_config

    doc = read_config(folder)
    where = folder / CONFIG_NAME
    cfg = _field(doc, "intervenable_config", dict, where)
    reps = _field(cfg, "representations", list, where)
    bad = [r for r in reps if not isinstance(r, dict)]
    if bad:
        from .errors import LoadError

        raise LoadError(f"info: {where}: each of 'representations' must be a JSON object, got {bad[0]!r}"[:300])
    return {
        "library_version": doc.get("library_version"), "base_model": doc.get("base_model"),
        "mode": cfg.get("mode"),
        "interventions": [{"layer": r.get("layer"), "component": r.get("component"), "unit": r.get("unit"),
                           "type": r.get("intervention_type")} for r in reps],
        "files": [CONFIG_NAME, _field(doc, "weights", dict, where).get("file")],
    }


def _info_codebooks(folder: Path) -> dict:
    from .codebook.saving import CODEBOOK_CONFIG

    doc = _json_file(folder / CODEBOOK_CONFIG)
    keys = ("name", "layer", "component", "num_codes", "k", "num_groups", "similarity")
    books = _field(doc, "codebooks", list, folder / CODEBOOK_CONFIG)
    return {"library_version": doc.get("library_version"), "base_model": doc.get("base_model"),
            "codebooks": [{k: e.get(k) for k in keys} for e in books if isinstance(e, dict)]}


def _info_records(folder: Path) -> dict:
    from .codebook import CodeRecords

    recs = CodeRecords.load_from_disk(folder)
    books = sorted(set(recs.codes["codebook"]))
    return {"codebooks": books, "codes": len(recs.codes), "sequences": len(recs.tokens), "tokens": recs.num_tokens,
            "fires": int(recs.fire_code.numel())}


def _info_sae(folder: Path) -> dict:
    from .sae import load_sae

    sae = load_sae(folder)
    return {k: v for k, v in sae.config().items() if k in ("d_in", "d_sae", "activation", "k", "hook_name", "dtype")}


def _info_patching(folder: Path) -> dict:
    from .analysis import PatchingResult

    res = PatchingResult.load(folder)
    return {"axes": list(res.axes), "grid": [len(res.labels[a]) for a in res.axes],
            "examples": int(res.per_example.shape[-1]), "direction": res.direction, "component": res.component,
            "method": res.method, "tokens": res.tokens,
            "top": [{"cell": cell, "normalized": value} for cell, value in res.top(3)]}


def _info_model(folder: Path) -> dict:
    doc = _json_file(folder / "config.json")
    keys = ("model_type", "architectures", "num_hidden_layers", "n_layer", "hidden_size", "n_embd", "vocab_size")
    out = {k: doc[k] for k in keys if k in doc}
    out["tokenizer"] = any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json", "vocab.json"))
    return out


def _info_prompts(path: Path) -> dict:
    lines = [ln for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    return {"prompts": len(lines), "first": lines[:3]}


_INFO = {"interventions": _info_interventions, "codebooks": _info_codebooks, "records": _info_records,
         "sae": _info_sae, "patching": _info_patching, "model": _info_model, "prompts": _info_prompts}


def _serve(args) -> int:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise MissingExtra(f"serve needs the app extra ({e.name} is not installed): pip install 'pyvene_like[app]'") from None
    from .app import Workspace, serve

    ws = Workspace(args.folders, model=args.model, tokenizer=args.tokenizer)
    found = ws.scan()
    print(f"pyvene-like serve: http://{args.host}:{args.port}/ serving "
          + ", ".join(f"{label} = {path}" for label, path in ws.roots.items()), file=sys.stderr)
    print("  found: " + (", ".join(f"{len(v)} {k}" for k, v in found.items() if v) or "nothing the app reads"),
          file=sys.stderr)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"pyvene-like serve: warning: listening on {args.host}, not only this machine; anyone who can "
              f"reach it can read the served folders and run the model", file=sys.stderr)
    serve(ws, host=args.host, port=args.port)
    return EXIT_OK


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="pyvene-like", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_sites = sub.add_parser("sites", help="list the sites of a model at one layer: module, width, heads")
    p_sites.add_argument("model", help="path or repo id loadable with AutoModel.from_pretrained")
    p_sites.add_argument("--layer", type=_non_negative_int, default=0)
    p_sites.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p_info = sub.add_parser("info", help="what a saved folder holds (interventions, codebooks, code records, "
                                         "SAE, patching result, model, prompt file)")
    p_info.add_argument("folder")
    p_serve = sub.add_parser("serve", help="the browser app over saved folders (needs pyvene_like[app])")
    p_serve.add_argument("folders", nargs="+", help="folders the app may read (it reads nothing else)")
    p_serve.add_argument("--model", help="a causal LM folder (save_pretrained) the pages run on; default: "
                                         "the one model folder under the served folders")
    p_serve.add_argument("--tokenizer", help="a tokenizer folder, when the model folder has none")
    p_serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p_serve.add_argument("--port", type=_port, default=8765)
    sub.add_parser("interventions", help="list registered intervention names")
    sub.add_parser("version", help="print the version")
    args = parser.parse_args(argv)

    if args.cmd == "version":
        from .version import __version__

        print(__version__)
    elif args.cmd == "interventions":
        from .registry import registered_interventions

        for name, cls in sorted(registered_interventions().items()):
            print(f"{name:14s} {cls.__name__}")
    elif args.cmd == "sites":
        rows = sites_table(_load_model(args.model), args.layer)
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            _print_sites(rows)
    elif args.cmd == "info":
        print(json.dumps(folder_info(args.folder), indent=2, default=str))
    elif args.cmd == "serve":
        return _serve(args)
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
