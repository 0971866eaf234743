"""pyvene's public helpers and toy models, for code ported by changing the import.

These are pyvene's top-level names (``pv.create_gpt2``, ``pv.MLPConfig``, ...); this package is
their home, and the top-level ``pyvene_like`` re-exports them.
"""

from ..exports import public_names
from .helpers import (
    GET_LOC,
    count_parameters,
    create_gpt2,
    create_gpt2_lm,
    create_gpt_neo,
    create_gru,
    create_gru_classifier,
    create_gru_lm,
    create_llama,
    create_mlp_classifier,
    embed_to_distrib,
    format_token,
    set_seed,
    top_vals,
)
from .mappings import (
    CONST_INPUT_HOOK,
    CONST_OUTPUT_HOOK,
    type_to_dimension_mapping,
    type_to_module_mapping,
)
from .toy_models import (
    GRUCell,
    GRUConfig,
    GRUForClassification,
    GRULMHeadModel,
    GRUModel,
    GRUModelOutput,
    MLPBlock,
    MLPConfig,
    MLPForClassification,
    MLPModel,
    MLPModelOutput,
)

__all__ = public_names(
    globals(), __name__,
    extra=("CONST_INPUT_HOOK", "CONST_OUTPUT_HOOK", "type_to_dimension_mapping", "type_to_module_mapping"),
)
