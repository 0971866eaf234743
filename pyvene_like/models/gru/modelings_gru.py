"""``pyvene.models.gru.modelings_gru``: the toy GRU's config and model classes."""

from ...compat.toy_models import (
    GRUCell,
    GRUConfig,
    GRUForClassification,
    GRULMHeadModel,
    GRUModel,
    GRUModelOutput,
)

__all__ = ["GRUCell", "GRUConfig", "GRUForClassification", "GRULMHeadModel", "GRUModel", "GRUModelOutput"]
