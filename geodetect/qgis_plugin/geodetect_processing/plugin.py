"""The plugin: registers the Processing provider (in ``initProcessing``, which headless
``qgis_process`` calls too)."""

from qgis.core import QgsApplication

from .provider import GeodetectProvider


class GeodetectPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.provider = None

    def initProcessing(self):  # noqa: N802 (QGIS's name)
        if self.provider is None:
            self.provider = GeodetectProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802
        self.initProcessing()

    def unload(self):
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
