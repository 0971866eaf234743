"""Codebook Features (Tamkin, Taufeeque and Goodman, 2023): codebook bottlenecks in any model,
and interventions that force codes on.

* :class:`CodebookLayer` -- top-k codes by similarity, their mean, straight-through gradients,
  one codebook per head when grouped;
* :func:`wrap_codebook` / :func:`unwrap_codebook` -- insert (remove) codebooks at any site the
  library resolves; ``model.codebooks`` holds them;
* :class:`CodeInfo`, :func:`parse_code_infos`, :func:`code_intervention_config` -- code lists
  such as ``Code: 4670, Layer: 0, Head: 13`` and the interventions that force them;
* :class:`~pyvene_like.codebook.intervention.CodebookIntervention` (registered as
  ``"codebook"``);
* :func:`train_codebook_model` -- language-modelling loss plus a reconstruction term, dead-code
  replacement; :func:`save_codebooks` / :func:`load_codebooks` -- only the codebooks, with the
  base model's identity;
* :func:`record_codes` / :func:`code_search` -- where each code fires over a dataset, and the
  codes whose firing matches a regular expression (precision and recall).
"""

from ..exports import public_names
from .analysis import CodeMatch, CodeRecords, code_search, positive_tokens, record_codes
from .info import CodeInfo, code_intervention_config, parse_code_infos
from .intervention import CodebookIntervention
from .layer import FORCE_MODES, SIMILARITIES, CodebookLayer, ForcedCodes
from .saving import load_codebooks, save_codebooks
from .train import CodebookTrainResult, train_codebook_model
from .wrap import CodebookSet, CodebookSite, get_codebooks, unwrap_codebook, wrap_codebook

__all__ = public_names(globals(), __name__, extra=("FORCE_MODES", "SIMILARITIES"))
