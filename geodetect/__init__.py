"""geodetect: find objects in large georeferenced images and export a GIS layer.

The notebook API (``prepare_data``, ``RetinaNet``, ``detect_objects``,
``plot_detections``) is imported on first use, so ``import geodetect`` stays light.
"""

from geodetect._version import __version__

_API = {"prepare_data", "RetinaNet", "detect_objects", "plot_detections", "DetectionData"}

__all__ = ["__version__", *sorted(_API)]


def __getattr__(name: str):
    if name in _API:
        from geodetect import api

        return getattr(api, name)
    raise AttributeError(f"module 'geodetect' has no attribute {name!r}")
