"""What a call returns: the one place that shapes ``forward``'s and ``generate``'s outputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers.utils import ModelOutput


@dataclass
class IntervenableModelOutput(ModelOutput):
    """What ``IntervenableModel(..., return_dict=True)`` returns."""

    original_outputs: Any = None
    intervened_outputs: Any = None
    collected_activations: Any = None


def shape_outputs(original, intervened, collected: list, has_collect: bool, return_dict: bool):
    """``(original, intervened)``, ``((original, collected), intervened)`` when the plan holds
    Collect interventions (pyvene's shape), or an :class:`IntervenableModelOutput`."""
    if return_dict:
        return IntervenableModelOutput(
            original_outputs=original,
            intervened_outputs=intervened,
            collected_activations=collected if has_collect else None,
        )
    if has_collect:
        return (original, collected), intervened
    return original, intervened
