"""pyvene's way of teaching it a new model type: component -> (module path, hook kind) tables.

``pv.type_to_module_mapping[ModelClass] = {"mlp_output": ("encoder.block[%s].layer[1]",
pv.models.constants.CONST_OUTPUT_HOOK)}`` declares a component for that class (``%s`` is the
layer); ``pv.type_to_dimension_mapping`` gives its width as a config expression. Sites are
introspected, so most models need neither; the tables are honoured (before introspection) for
code that sets them. The tables themselves live with the rest of the per-family data in
:mod:`pyvene_like.sites.families`; ``pv.models.constants`` is :mod:`pyvene_like.models.constants`.
"""

from __future__ import annotations

from ..sites.families import (
    CONST_INPUT_HOOK,
    CONST_OUTPUT_HOOK,
    type_to_dimension_mapping,
    type_to_module_mapping,
)

__all__ = ["CONST_INPUT_HOOK", "CONST_OUTPUT_HOOK", "type_to_dimension_mapping", "type_to_module_mapping"]
