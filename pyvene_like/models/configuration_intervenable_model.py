"""``pyvene.models.configuration_intervenable_model``: the two config classes."""

from ..config import IntervenableConfig, RepresentationConfig

__all__ = ["IntervenableConfig", "RepresentationConfig"]
