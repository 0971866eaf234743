"""pyvene_like: declarative interventions on the internals of any PyTorch / HuggingFace model.

This file is the curated public API: the imports below are the one list of what ``pv.<name>``
offers (``__all__`` is derived from them). Feature packages are reached as ``pv.sae``,
``pv.codebook``, ``pv.analysis`` and ``pv.training``; see the README's "Architecture" section
for the map of the packages.
"""

from . import analysis, codebook, compat, interventions, models, sae, training
from .codebook import CodebookIntervention
from .compat import (  # pyvene's helpers and toy models, for code ported by changing the import
    GET_LOC,
    GRUConfig,
    GRUForClassification,
    GRULMHeadModel,
    GRUModel,
    MLPConfig,
    MLPForClassification,
    MLPModel,
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
    type_to_dimension_mapping,
    type_to_module_mapping,
)
from .config import IntervenableConfig, RepresentationConfig
from .errors import (
    ConfigError,
    LoadError,
    LocationError,
    PyveneLikeError,
    PyveneLikeWarning,
    ShapeError,
    SiteError,
    TrainingError,
)
from .exports import public_names
from .interventions import (
    AdditionIntervention,
    BoundlessRotatedSpaceIntervention,
    CollectIntervention,
    ConstantSourceIntervention,
    Intervention,
    LambdaIntervention,
    LowRankRotatedSpaceIntervention,
    NoiseIntervention,
    RotatedSpaceIntervention,
    SigmoidMaskIntervention,
    SigmoidMaskRotatedSpaceIntervention,
    SkipIntervention,
    SubtractionIntervention,
    TrainableIntervention,
    VanillaIntervention,
    ZeroIntervention,
)
from .model import IntervenableModel, IntervenableModelOutput
from .registry import get_intervention_class, register_intervention, registered_interventions
from .sae import (
    SAE,
    SAEAblateIntervention,
    SAEInterchangeIntervention,
    SAEIntervention,
    SAESteerIntervention,
    SAESwapIntervention,
    load_sae,
)
from .sites import COMPONENTS
from .training import (
    CausalModel,
    CounterfactualCollator,
    EvalResult,
    Trainer,
    TrainResult,
    evaluate,
    generate_counterfactual_dataset,
    generate_factual_dataset,
    hierarchical_equality,
    train_interventions,
)
from .version import __version__

__all__ = public_names(
    globals(), __name__,
    extra=("__version__", "COMPONENTS", "GET_LOC", "analysis", "codebook", "compat", "interventions", "models",
           "sae", "training", "type_to_dimension_mapping", "type_to_module_mapping"),
)
