"""``pyvene.models.gru``: the toy GRU models."""

from . import modelings_gru, modelings_intervenable_gru

__all__ = ["modelings_gru", "modelings_intervenable_gru"]
