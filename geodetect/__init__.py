"""geodetect: find objects in large georeferenced images and export a GIS layer."""

from geodetect._version import __version__

__all__ = ["__version__"]
