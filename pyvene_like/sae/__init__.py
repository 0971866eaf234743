"""Sparse autoencoders: one :class:`SAE` module, loaders for the published formats (a registry:
one :func:`register_sae_format` loader per format), the TransformerLens hook-name translator,
the SAE interventions (:mod:`pyvene_like.sae.interventions`) and steering toward a target
(:mod:`pyvene_like.sae.steering`, which reads activations with
:func:`pyvene_like.analysis.collect_activations`: this package may import ``analysis``, never the
other way round).
"""

from ..exports import public_names
from .formats import (
    FORMATS,
    SAE_FORMATS,
    LoadOptions,
    SAEFormat,
    SAESource,
    load_sae,
    register_sae_format,
    sae_from_openai_state_dict,
    saelens_settings,
    save_sae,
)
from .hooks import hook_to_site, openai_location_to_site
from .interventions import (
    SAEAblateIntervention,
    SAEInterchangeIntervention,
    SAEIntervention,
    SAESteerIntervention,
    SAESwapIntervention,
)
from .sae import ACTIVATIONS, NORMALIZATIONS, SAE
from .steering import (
    FeatureScores,
    coverage,
    min_distances,
    prompt_activations,
    prompt_summaries,
    reconstruction_error,
    score_features,
)
from .train import SAETrainResult, train_sae

__all__ = public_names(globals(), __name__, extra=("ACTIVATIONS", "NORMALIZATIONS", "FORMATS", "SAE_FORMATS"))
