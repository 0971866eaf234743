"""``python -m pyvene_like``: the ``pyvene-like`` command line (:mod:`pyvene_like.cli`)."""

from .cli import main

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
