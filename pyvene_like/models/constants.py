"""``pyvene.models.constants``: the hook kinds used in ``type_to_module_mapping`` entries."""

from ..sites.families import CONST_INPUT_HOOK, CONST_OUTPUT_HOOK

__all__ = ["CONST_INPUT_HOOK", "CONST_OUTPUT_HOOK"]
