"""``pyvene.models.gpt2``: the GPT-2 factories."""

from . import modelings_intervenable_gpt2

__all__ = ["modelings_intervenable_gpt2"]
