"""``pyvene.models.mlp.modelings_mlp``: the toy MLP's config and model classes."""

from ...compat.toy_models import MLPBlock, MLPConfig, MLPForClassification, MLPModel, MLPModelOutput

__all__ = ["MLPBlock", "MLPConfig", "MLPForClassification", "MLPModel", "MLPModelOutput"]
