"""``pyvene.models.llama``: the LLaMA factories."""

from . import modelings_intervenable_llama

__all__ = ["modelings_intervenable_llama"]
