"""``pyvene.models.mlp``: the toy MLP classifier."""

from . import modelings_intervenable_mlp, modelings_mlp

__all__ = ["modelings_intervenable_mlp", "modelings_mlp"]
