"""``pyvene.models.intervenable_base``: the wrapped model."""

from ..model import IntervenableModel, IntervenableModelOutput

__all__ = ["IntervenableModel", "IntervenableModelOutput"]
