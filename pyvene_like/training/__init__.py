"""Causal models, counterfactual data, the one training loop, and the DAS trainer and evaluator.

:mod:`.loop` (``TrainLoop``, ``Callback``, ``EarlyStopping``, ``make_accelerator``,
``make_scheduler``) and :mod:`.checkpoint` (through :mod:`pyvene_like.serialization`) sit below
the feature packages (``sae``, ``codebook``, ``analysis``), which train on the loop; this
package imports none of them.
"""

from ..exports import public_names
from .causal_model import CausalModel, hierarchical_equality
from .data import CounterfactualCollator, generate_counterfactual_dataset, generate_factual_dataset
from .evaluate import EvalResult, default_logits, default_loss, default_metric, evaluate
from .loop import Callback, EarlyStopping, LoopResult, TrainLoop, make_accelerator, make_scheduler
from .trainer import Trainer, TrainResult, train_interventions

__all__ = public_names(globals(), __name__)
