"""``pyvene.models.basic_utils``: vocabulary read-outs and small helpers."""

from ..compat.helpers import count_parameters, embed_to_distrib, format_token, set_seed, top_vals

__all__ = ["count_parameters", "embed_to_distrib", "format_token", "set_seed", "top_vals"]
