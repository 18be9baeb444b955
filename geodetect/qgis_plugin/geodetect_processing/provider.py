"""The Processing provider ``geodetect``: its algorithms and its one setting, the
geodetect command to run."""

from qgis.core import QgsProcessingProvider

from .algorithms import ALGORITHMS, COMMAND_SETTING


class GeodetectProvider(QgsProcessingProvider):
    def id(self):
        return "geodetect"

    def name(self):
        return "geodetect"

    def longName(self):  # noqa: N802 (QGIS's name)
        return "geodetect: objects in aerial imagery"

    def load(self):
        try:  # Processing's own settings dialog (absent if the Processing plugin is off)
            from processing.core.ProcessingConfig import ProcessingConfig, Setting

            ProcessingConfig.addSetting(
                Setting(
                    self.name(),
                    COMMAND_SETTING,
                    "geodetect command (empty: the one `geodetect qgis install` recorded, "
                    "or geodetect on PATH)",
                    "",
                )
            )
            ProcessingConfig.readSettings()
        except ImportError:
            pass
        self.refreshAlgorithms()
        return True

    def unload(self):
        try:
            from processing.core.ProcessingConfig import ProcessingConfig

            ProcessingConfig.removeSetting(COMMAND_SETTING)
        except ImportError:
            pass

    def loadAlgorithms(self):  # noqa: N802
        for algorithm in ALGORITHMS:
            self.addAlgorithm(algorithm())
