"""``pyvene.models.llama.modelings_intervenable_llama``: the LLaMA factories."""

from ...compat.helpers import create_llama

__all__ = ["create_llama"]
