"""``pyvene.models.interventions``: the intervention classes (``from ... import *`` gives them all)."""

from ..interventions import *  # noqa: F403 - the package's __all__ is the list
from ..interventions import __all__  # noqa: F401
