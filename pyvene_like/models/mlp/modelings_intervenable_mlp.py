"""``pyvene.models.mlp.modelings_intervenable_mlp``: the MLP factory."""

from ...compat.helpers import create_mlp_classifier

__all__ = ["create_mlp_classifier"]
