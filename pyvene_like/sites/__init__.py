"""Where interventions go: the component vocabulary and its resolution on any model."""

from .resolve import ModelLayout, Site, resolve_raw_path, resolve_site
from .vocabulary import BASE_COMPONENTS, COMPONENTS, HEAD_COMPONENTS, HEAD_UNITS

__all__ = [
    "COMPONENTS",
    "BASE_COMPONENTS",
    "HEAD_COMPONENTS",
    "HEAD_UNITS",
    "ModelLayout",
    "Site",
    "resolve_site",
    "resolve_raw_path",
]
