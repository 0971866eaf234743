"""``pyvene-like`` command line: inspect what the library resolves on a model."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    """Run the command; a user mistake (a bad path, a layer the model lacks) is one line on
    stderr (``pyvene-like: error: ...``, the library error's message) and exit status 1."""
    from .errors import PyveneLikeError

    try:
        return _main(argv)
    except PyveneLikeError as e:
        message = " ".join(str(e).split())  # one line
        print(f"pyvene-like: error: {message}", file=sys.stderr)
        return 1


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a non-negative int, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative int, got {text!r}")
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


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="pyvene-like", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_sites = sub.add_parser("sites", help="list the resolved sites of a model (local folder or Hub id)")
    p_sites.add_argument("model", help="path or repo id loadable with AutoModel.from_pretrained")
    p_sites.add_argument("--layer", type=_non_negative_int, default=0)
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
        from .errors import SiteError
        from .sites import COMPONENTS, ModelLayout, resolve_site

        model = _load_model(args.model)
        layout = ModelLayout(model)
        # The layer itself must exist: checked on the residual stream, so "--layer 99" is an
        # error rather than a table of "unavailable" rows.
        resolve_site(layout, args.layer, "block_output", "pos")
        rows = {}
        for comp in COMPONENTS:
            unit = "h" if comp.startswith("head_") else "pos"
            try:
                site = resolve_site(layout, args.layer, comp, unit)
                rows[comp] = site.description
            except SiteError as e:
                rows[comp] = f"unavailable: {e}"
        print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
