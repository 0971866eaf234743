"""``pyvene.models.gpt_neo``: the GPT-Neo factories."""

from . import modelings_intervenable_gpt_neo

__all__ = ["modelings_intervenable_gpt_neo"]
