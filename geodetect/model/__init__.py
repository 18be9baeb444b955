"""The detector: RetinaNet building, the model file and device choice."""

from geodetect.model.build import build_retinanet
from geodetect.model.device import autocast_dtype, resolve_device
from geodetect.model.file import LoadedModel, file_id, load_model, read_spec, save_model
from geodetect.model.spec import BACKBONES, PRESETS, ModelSpec, preset_widths

__all__ = [
    "BACKBONES",
    "PRESETS",
    "LoadedModel",
    "ModelSpec",
    "autocast_dtype",
    "build_retinanet",
    "file_id",
    "load_model",
    "preset_widths",
    "read_spec",
    "resolve_device",
    "save_model",
]
