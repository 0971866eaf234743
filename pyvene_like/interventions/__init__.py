"""The intervention contract and the basic, rotated and masked types.

Each class registers itself under a name usable in configs (``@register_intervention``). The
feature packages own theirs: the SAE interventions are in :mod:`pyvene_like.sae.interventions`,
the codebook intervention in :mod:`pyvene_like.codebook.intervention`. This package installs
the registry's check for what may be registered (:func:`check_intervention_class`).
"""

import inspect

from ..exports import public_names
from ..registry import INTERVENTIONS
from .base import ConstantSourceIntervention, Intervention
from .basic import (
    AdditionIntervention,
    CollectIntervention,
    LambdaIntervention,
    NoiseIntervention,
    SkipIntervention,
    SubtractionIntervention,
    VanillaIntervention,
    ZeroIntervention,
)
from .masked import SigmoidMaskIntervention, SigmoidMaskRotatedSpaceIntervention
from .rotated import (
    BoundlessRotatedSpaceIntervention,
    LowRankRotatedSpaceIntervention,
    RotatedSpaceIntervention,
    RotateLayer,
    TrainableIntervention,
)


def check_intervention_class(name: str, cls) -> None:
    """What ``@register_intervention(name)`` accepts: an :class:`Intervention` subclass whose
    ``forward`` takes ``(self, base, source=None, subspaces=None)``."""
    if not (inspect.isclass(cls) and issubclass(cls, Intervention)):
        raise TypeError(f"register_intervention({name!r}): {cls!r} is not an Intervention subclass")
    if not inspect.isfunction(getattr(cls, "forward", None)):
        raise TypeError(f"register_intervention({name!r}): {cls.__name__} defines no forward()")
    params = list(inspect.signature(cls.forward).parameters)
    if params[:2] != ["self", "base"]:
        raise TypeError(
            f"register_intervention({name!r}): {cls.__name__}.forward must take "
            f"(self, base, source=None, subspaces=None), got ({', '.join(params)})"
        )


# Runs over the types registered above too, then at every registration.
INTERVENTIONS.set_check(check_intervention_class)

__all__ = public_names(globals(), __name__)
