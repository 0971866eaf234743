"""``pyvene-like`` command line: inspect what the library resolves on a model."""

from __future__ import annotations

import argparse
import json


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="pyvene-like", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_sites = sub.add_parser("sites", help="list the resolved sites of a model (local folder or Hub id)")
    p_sites.add_argument("model", help="path or repo id loadable with AutoModel.from_pretrained")
    p_sites.add_argument("--layer", type=int, default=0)
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
        from transformers import AutoModel

        from .errors import SiteError
        from .sites import COMPONENTS, ModelLayout, resolve_site

        model = AutoModel.from_pretrained(args.model)
        layout = ModelLayout(model)
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
