"""``pyvene.models.gru.modelings_intervenable_gru``: the GRU factories."""

from ...compat.helpers import create_gru, create_gru_classifier, create_gru_lm

__all__ = ["create_gru", "create_gru_classifier", "create_gru_lm"]
