"""geodetect's QGIS plugin: a Processing provider that runs the geodetect command line."""


def classFactory(iface):  # noqa: N802 (QGIS's name)
    from .plugin import GeodetectPlugin

    return GeodetectPlugin(iface)
