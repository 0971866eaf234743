"""``pyvene.models.gpt_neo.modelings_intervenable_gpt_neo``: the GPT-Neo factories."""

from ...compat.helpers import create_gpt_neo

__all__ = ["create_gpt_neo"]
