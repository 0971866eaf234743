"""The browser app (``pyvene-like serve``): codebook codes, SAE features, patching heatmaps and
saved interventions, browsed and run from a local page.

* :class:`Workspace` -- the folders the app may read, the model the pages run on, and each
  page's computation as JSON-ready values;
* :func:`create_app` / :func:`serve` -- the Starlette application and uvicorn around it
  (needs the ``app`` extra: ``pip install pyvene_like[app]``).
"""

from ..exports import public_names
from .server import create_app, serve
from .workspace import KINDS, PathRefused, Workspace, folder_kind

__all__ = public_names(globals(), __name__, extra=("KINDS",))
