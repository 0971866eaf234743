"""Sparse autoencoders: one :class:`SAE` module, loaders for the published formats, and the
TransformerLens hook-name translator. The SAE interventions live in
:mod:`pyvene_like.interventions.sae`."""

from .formats import FORMATS, load_sae, sae_from_openai_state_dict, saelens_settings
from .hooks import hook_to_site, openai_location_to_site
from .sae import ACTIVATIONS, NORMALIZATIONS, SAE

__all__ = [
    "SAE",
    "ACTIVATIONS",
    "NORMALIZATIONS",
    "FORMATS",
    "load_sae",
    "saelens_settings",
    "sae_from_openai_state_dict",
    "hook_to_site",
    "openai_location_to_site",
]
