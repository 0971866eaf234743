"""``pyvene.models.gpt2.modelings_intervenable_gpt2``: the GPT-2 factories."""

from ...compat.helpers import create_gpt2, create_gpt2_lm

__all__ = ["create_gpt2", "create_gpt2_lm"]
