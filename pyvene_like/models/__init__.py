"""pyvene's module paths for its public names.

pyvene code imports public names from where pyvene defines them as well as from the top
level (``from pyvene.models.basic_utils import embed_to_distrib``,
``pv.models.constants.CONST_OUTPUT_HOOK``). These modules hold nothing of their own: each
re-exports pyvene_like's object for the same name, so such imports port by changing
``pyvene`` to ``pyvene_like``. Only paths that carry public names are offered; pyvene's
internals (``modeling_utils``, ``intervention_utils``) have no counterpart here.
"""

from . import (
    basic_utils,
    configuration_intervenable_model,
    constants,
    gpt2,
    gpt_neo,
    gru,
    intervenable_base,
    interventions,
    llama,
    mlp,
)

__all__ = ["basic_utils", "configuration_intervenable_model", "constants", "gpt2", "gpt_neo", "gru",
           "intervenable_base", "interventions", "llama", "mlp"]
