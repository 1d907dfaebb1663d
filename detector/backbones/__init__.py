"""Image encoders behind one interface (:class:`Backbone`) and one factory (:func:`create_backbone`)."""

from detector.backbones.base import Backbone, Preprocess, autocast_context, state_dict_hash
from detector.backbones.checkpoint import (
    BackboneError,
    BackboneWeightsError,
    read_state_dict,
    save_state_dict,
)
from detector.backbones.registry import (
    TINY_BACKBONES,
    create_backbone,
    describe_backbones,
    list_backbones,
    register_backbone,
)

__all__ = [
    "TINY_BACKBONES",
    "Backbone",
    "BackboneError",
    "BackboneWeightsError",
    "Preprocess",
    "autocast_context",
    "create_backbone",
    "describe_backbones",
    "list_backbones",
    "read_state_dict",
    "register_backbone",
    "save_state_dict",
    "state_dict_hash",
]
