"""The algorithms: each builds a geodetect command line from its parameters and runs it
(:mod:`.runner`); progress, log lines and the one-line error reach Processing's dialog
(or ``qgis_process``), and outputs load with the styles geodetect wrote beside them (in
the GeoPackage's ``layer_styles`` table or a ``.qml`` file, which QGIS applies itself)."""

import json
import os
import shlex
import tempfile
import urllib.parse

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterField,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
    QgsProcessingParameterVectorLayer,
    QgsProviderRegistry,
    QgsVectorFileWriter,
)

from .runner import geodetect_command, run

COMMAND_SETTING = "GEODETECT_COMMAND"
DETECTION_GROUP = ("detection", "Detection")
COUNTY_GROUP = ("county", "County answers")
# Raster sources GDAL reads over the network (the plugin cannot import geodetect).
REMOTE_SOURCES = ("/vsi", "http://", "https://", "s3://", "gs://", "az://")


def command_setting():
    """The command set in Processing's options, or None."""
    try:
        from processing.core.ProcessingConfig import ProcessingConfig

        return ProcessingConfig.getSetting(COMMAND_SETTING) or None
    except ImportError:
        return None


class GeodetectAlgorithm(QgsProcessingAlgorithm):
    """One geodetect command. Subclasses set NAME, TITLE, GROUP and HELP, declare their
    parameters in ``initAlgorithm`` and build ``arguments``."""

    NAME = ""
    TITLE = ""
    GROUP = DETECTION_GROUP
    HELP = ""

    def createInstance(self):  # noqa: N802 (QGIS's names, here and below)
        return type(self)()

    def name(self):
        return self.NAME

    def displayName(self):  # noqa: N802
        return self.TITLE

    def groupId(self):  # noqa: N802
        return self.GROUP[0]

    def group(self):
        return self.GROUP[1]

    def shortHelpString(self):  # noqa: N802
        return self.HELP

    def arguments(self, parameters, context, feedback):
        """The command's arguments after ``geodetect`` (without ``--progress``), and the
        results to return."""
        raise NotImplementedError

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        args, results = self.arguments(parameters, context, feedback)
        try:
            command = geodetect_command(command_setting())
        except FileNotFoundError as exc:
            raise QgsProcessingException(str(exc)) from None
        argv = [*command, *args, "--progress", "json"]
        feedback.pushCommandInfo(" ".join(shlex.quote(a) for a in argv))

        def progress(event):
            if event.get("fraction") is not None:
                feedback.setProgress(100.0 * event["fraction"])
            if event.get("total"):
                feedback.setProgressText(
                    f"{event.get('stage', '')}: {event.get('done')} of "
                    f"{event.get('total')} {event.get('unit', '')}s"
                )

        def log(line):
            if not line.startswith("geodetect: error: "):
                feedback.pushInfo(line)

        result = run(argv, on_progress=progress, on_log=log, is_canceled=feedback.isCanceled)
        if result.canceled:
            raise QgsProcessingException(
                "cancelled; run it again with the same inputs and output to continue "
                "(detection keeps a journal of the finished blocks)"
            )
        if result.returncode:
            raise QgsProcessingException(
                result.error or f"geodetect ended with exit status {result.returncode}"
            )
        return self.finish(result, results, parameters, context, feedback)

    def finish(self, result, results, parameters, context, feedback):
        """Results from a run that succeeded (its standard output is shown)."""
        if result.stdout.strip():
            feedback.pushInfo(result.stdout.rstrip())
        return results

    # --- turning parameters into paths ---------------------------------------------

    def raster_paths(self, parameters, name, context, area=None):
        """The rasters' sources as geodetect takes them: files, URLs, and an XYZ or
        WMTS tile layer's service followed by ``--bbox`` (the ``area`` parameter in degrees),
        since a tile service covers the world (an algorithm without ``area`` refuses
        tile layers)."""
        layers = self.parameterAsLayerList(parameters, name, context)
        if not layers:
            raise QgsProcessingException(f"{name}: give at least one raster layer or file")
        paths, services = [], []
        for layer in layers:
            source = layer.source()
            # A raster GDAL reads over the network (a URL, /vsicurl/, /vsis3/...): the
            # same source for geodetect, which reads it by range requests.
            if layer.providerType() == "gdal" and source.lower().startswith(REMOTE_SOURCES):
                paths.append(source)
                continue
            if layer.providerType() == "wms":
                query = dict(urllib.parse.parse_qsl(source))
                if query.get("type") == "xyz" and "{z}" in query.get("url", ""):
                    services.append(query["url"])
                    continue
                if query.get("tileMatrixSet") and query.get("url"):  # a WMTS layer
                    services.append(
                        f"WMTS:{query['url']},layer={query.get('layers', '')},"
                        f"tilematrixset={query['tileMatrixSet']}"
                    )
                    continue
                raise QgsProcessingException(
                    f"{layer.name()}: a WMS service geodetect cannot read ({source}); add "
                    "its WMTS or XYZ tiles as a layer, or save the area as a GeoTIFF first"
                )
            parts = QgsProviderRegistry.instance().decodeUri(layer.providerType(), source)
            path = parts.get("path") or source
            if not os.path.exists(path):
                raise QgsProcessingException(
                    f"{layer.name()}: not a raster file geodetect can read ({source}); "
                    "save it as a GeoTIFF first"
                )
            paths.append(path)
        if services and area is None:
            raise QgsProcessingException(
                f"{layers[0].name()}: a tile service layer is read by 'Detect objects'; to "
                "train on it, save the labelled area as a GeoTIFF first"
            )
        if services:
            if parameters.get(area) in (None, ""):
                raise QgsProcessingException(
                    f"{layers[0].name()}: a tile service covers the world; set the area to "
                    "read (the map canvas' extent, a layer's, or one drawn)"
                )
            wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
            box = self.parameterAsExtent(parameters, area, context, wgs84)
            bbox = [box.xMinimum(), box.yMinimum(), box.xMaximum(), box.yMaximum()]
            paths += [*services, "--bbox", ",".join(f"{v:.7f}" for v in bbox)]
        return paths

    def vector_path(self, parameters, name, context, feedback, *, whole_file=False, named=True):
        """(path, layer name or None) of a vector input: its file when it has one (a
        layer inside a GeoPackage named), else a temporary GeoPackage copy. With
        ``whole_file`` (a layer geodetect wrote, read with its coverage layer) the file
        is needed as it is. ``named=False``: the command takes no layer name, so a
        layer named inside a file (which may hold others) is copied too."""
        layer = self.parameterAsVectorLayer(parameters, name, context)
        if layer is None:
            return None, None
        parts = QgsProviderRegistry.instance().decodeUri(layer.providerType(), layer.source())
        path, layer_name = parts.get("path"), parts.get("layerName") or None
        is_file = layer.providerType() == "ogr" and path and os.path.isfile(path)
        if is_file and (named or whole_file or layer_name is None):
            return path, layer_name
        if whole_file:
            raise QgsProcessingException(
                f"{layer.name()}: give the file geodetect detect wrote (it holds the "
                "coverage layer too)"
            )
        copy = os.path.join(tempfile.mkdtemp(prefix="geodetect-"), "layer.gpkg")
        options = QgsVectorFileWriter.SaveVectorOptions()
        options.driverName = "GPKG"
        error = QgsVectorFileWriter.writeAsVectorFormatV3(
            layer, copy, context.transformContext(), options
        )
        if error[0] != QgsVectorFileWriter.NoError:
            raise QgsProcessingException(f"{layer.name()}: could not be copied: {error[1]}")
        feedback.pushInfo(f"{layer.name()} copied to {copy}")
        return copy, None


def _json_output(result, results):
    """Write a ``--json`` run's standard output to the OUTPUT file; returns it parsed."""
    with open(results["OUTPUT"], "w", encoding="utf-8") as f:
        f.write(result.stdout)
    return json.loads(result.stdout)


def _layer_input(name, title, optional=False):
    return QgsProcessingParameterVectorLayer(
        name, title, [QgsProcessing.TypeVectorAnyGeometry], optional=optional
    )


def _detections(name="DETECTIONS", title="Detections (a layer geodetect detect wrote)"):
    return _layer_input(name, title)


class DetectAlgorithm(GeodetectAlgorithm):
    NAME, TITLE = "detect", "Detect objects"
    HELP = (
        "Finds objects (pools) over rasters or a mosaic of GeoTIFFs with a geodetect model "
        "and writes one layer: each object once, also on tile seams, with its score, area "
        "and provenance, plus the ground actually looked at (a 'coverage' layer). A "
        "cancelled run continues where it stopped when run again with the same output."
    )
    DEVICES = ["auto", "cpu", "cuda"]

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(
            QgsProcessingParameterMultipleLayers("INPUT", "Rasters", QgsProcessing.TypeRaster)
        )
        self.addParameter(QgsProcessingParameterFile("MODEL", "Model file", extension="model"))
        self.addParameter(
            QgsProcessingParameterExtent(
                "AREA", "Area to read from a tile service layer (XYZ or WMTS)", optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                "THRESHOLD",
                "Minimum score (empty: the model's)",
                QgsProcessingParameterNumber.Double,
                optional=True,
                minValue=0,
                maxValue=1,
            )
        )
        self.addParameter(
            QgsProcessingParameterString(
                "DATE", "Acquisition date YYYY-MM-DD (empty: from the imagery)", optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterBoolean(
                "TTA", "Test-time augmentation (slower, a little better)", defaultValue=False
            )
        )
        self.addParameter(
            QgsProcessingParameterEnum("DEVICE", "Device", options=self.DEVICES, defaultValue=0)
        )
        self.addParameter(
            QgsProcessingParameterVectorDestination(
                "OUTPUT", "Detections", QgsProcessing.TypeVectorPolygon
            )
        )

    def arguments(self, parameters, context, feedback):
        out = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        args = ["detect", *self.raster_paths(parameters, "INPUT", context, area="AREA")]
        args += ["--model", self.parameterAsFile(parameters, "MODEL", context), "--out", out]
        if parameters.get("THRESHOLD") not in (None, ""):
            args += ["--threshold", str(self.parameterAsDouble(parameters, "THRESHOLD", context))]
        date = self.parameterAsString(parameters, "DATE", context)
        if date:
            args += ["--date", date]
        if self.parameterAsBool(parameters, "TTA", context):
            args.append("--tta")
        args += ["--device", self.DEVICES[self.parameterAsEnum(parameters, "DEVICE", context)]]
        return [*args, "--overwrite"], {"OUTPUT": out}


class TrainAlgorithm(GeodetectAlgorithm):
    NAME, TITLE = "train", "Train a detector"
    HELP = (
        "Trains a model on rasters labelled by a layer (polygons, boxes or points, any CRS) "
        "and/or a review filled in QGIS (geodetect's 'Draw a review sample'), within a time "
        "budget, and writes one model file."
    )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(
            QgsProcessingParameterMultipleLayers("INPUT", "Rasters", QgsProcessing.TypeRaster)
        )
        self.addParameter(_layer_input("LABELS", "Labels", optional=True))
        self.addParameter(
            QgsProcessingParameterFile(
                "REVIEW", "A filled review (GeoPackage)", extension="gpkg", optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterFile(
                "RESUME", "Continue from this model", extension="model", optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                "MINUTES",
                "Time budget (minutes)",
                QgsProcessingParameterNumber.Double,
                defaultValue=30,
                minValue=0.1,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                "STEPS",
                "Training steps (empty: as many as the budget allows; the same steps and "
                "labels give the same model on any machine)",
                QgsProcessingParameterNumber.Integer,
                optional=True,
                minValue=1,
            )
        )
        self.addParameter(
            QgsProcessingParameterFileDestination(
                "OUTPUT", "Model file", fileFilter="geodetect model (*.model)"
            )
        )

    def arguments(self, parameters, context, feedback):
        out = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        args = ["train", *self.raster_paths(parameters, "INPUT", context), "--out", out]
        labels, layer = self.vector_path(parameters, "LABELS", context, feedback)
        if labels:
            args += ["--labels", labels] + (["--layer", layer] if layer else [])
        review = self.parameterAsFile(parameters, "REVIEW", context)
        if review:
            args += ["--review", review]
        resume = self.parameterAsFile(parameters, "RESUME", context)
        if resume:
            args += ["--resume", resume]
        minutes = self.parameterAsDouble(parameters, "MINUTES", context)
        args += ["--max-minutes", f"{minutes:g}"]
        if parameters.get("STEPS") not in (None, ""):  # whichever ends first
            args += ["--steps", str(self.parameterAsInt(parameters, "STEPS", context))]
        return [*args, "--overwrite"], {"OUTPUT": out}


class EvaluateAlgorithm(GeodetectAlgorithm):
    NAME, TITLE = "evaluate", "Evaluate a layer against the truth"
    HELP = (
        "Matches detections to true outlines in map units: precision, recall, F1, AP50, "
        "AP75, duplicates and centre errors in metres. The full result is written as JSON."
    )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(_layer_input("INPUT", "Detections"))
        self.addParameter(_layer_input("TRUTH", "True outlines"))
        self.addParameter(
            QgsProcessingParameterNumber(
                "IOU",
                "IoU to match",
                QgsProcessingParameterNumber.Double,
                defaultValue=0.5,
                minValue=0.05,
                maxValue=0.95,
            )
        )
        self.addParameter(
            QgsProcessingParameterFileDestination(
                "OUTPUT", "Result (JSON)", fileFilter="JSON (*.json)"
            )
        )

    def arguments(self, parameters, context, feedback):
        found, found_layer = self.vector_path(parameters, "INPUT", context, feedback)
        truth, truth_layer = self.vector_path(parameters, "TRUTH", context, feedback)
        args = ["evaluate", found, "--truth", truth, "--json"]
        args += ["--iou", f"{self.parameterAsDouble(parameters, 'IOU', context):g}"]
        if found_layer:
            args += ["--detections-layer", found_layer]
        if truth_layer:
            args += ["--truth-layer", truth_layer]
        return args, {"OUTPUT": self.parameterAsFileOutput(parameters, "OUTPUT", context)}

    def finish(self, result, results, parameters, context, feedback):
        scores = _json_output(result, results)
        feedback.pushInfo(
            ", ".join(
                f"{k} {scores[k]:.3f}"
                for k in ("precision", "recall", "f1", "ap50")
                if isinstance(scores.get(k), float)
            )
        )
        return results


class ParcelsAlgorithm(GeodetectAlgorithm):
    NAME, TITLE, GROUP = "parcels", "Pools per parcel and the tax roll", COUNTY_GROUP
    HELP = (
        "Gives each parcel the pools whose larger part lies in it (pools, water_m2, "
        "best_score) and, with the roll's field, a status: new (found, not on the roll: the "
        "review list), missing, agrees, or not_covered (the imagery does not show it)."
    )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(_detections())
        self.addParameter(_layer_input("PARCELS", "Parcels"))
        self.addParameter(
            QgsProcessingParameterField(
                "ID_FIELD", "Parcel id field", parentLayerParameterName="PARCELS", optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterField(
                "ROLL_FIELD",
                "The roll's pools (yes/no or a count)",
                parentLayerParameterName="PARCELS",
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                "MIN_AREA",
                "Ignore pools under (m²)",
                QgsProcessingParameterNumber.Double,
                defaultValue=0,
                minValue=0,
            )
        )
        self.addParameter(
            QgsProcessingParameterVectorDestination(
                "OUTPUT", "Parcels with their pools", QgsProcessing.TypeVectorPolygon
            )
        )

    def arguments(self, parameters, context, feedback):
        found, _ = self.vector_path(parameters, "DETECTIONS", context, feedback, whole_file=True)
        parcels, layer = self.vector_path(parameters, "PARCELS", context, feedback)
        out = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        args = ["parcels", found, "--parcels", parcels, "--out", out]
        args += ["--min-area", f"{self.parameterAsDouble(parameters, 'MIN_AREA', context):g}"]
        if layer:
            args += ["--parcels-layer", layer]
        for option, name in (("--id-field", "ID_FIELD"), ("--roll-field", "ROLL_FIELD")):
            value = self.parameterAsString(parameters, name, context)
            if value:
                args += [option, value]
        return [*args, "--overwrite"], {"OUTPUT": out}


class ChangeAlgorithm(GeodetectAlgorithm):
    NAME, TITLE, GROUP = "change", "Change between two flights", COUNTY_GROUP
    HELP = (
        "Matches the pools of two flights in map coordinates after estimating the offset "
        "between them: each pool new, removed, kept, resized or not_covered."
    )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(_detections("OLD", "Old flight's detections"))
        self.addParameter(_detections("NEW", "New flight's detections"))
        self.addParameter(
            QgsProcessingParameterNumber(
                "MAX_SHIFT",
                "Largest offset between the flights (m)",
                QgsProcessingParameterNumber.Double,
                defaultValue=3,
                minValue=0.1,
            )
        )
        self.addParameter(_layer_input("PARCELS", "Parcels (optional)", optional=True))
        self.addParameter(
            QgsProcessingParameterField(
                "ID_FIELD", "Parcel id field", parentLayerParameterName="PARCELS", optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterVectorDestination(
                "OUTPUT", "Pools with their change", QgsProcessing.TypeVectorPolygon
            )
        )

    def arguments(self, parameters, context, feedback):
        old, _ = self.vector_path(parameters, "OLD", context, feedback, whole_file=True)
        new, _ = self.vector_path(parameters, "NEW", context, feedback, whole_file=True)
        out = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        args = ["change", old, new, "--out", out]
        args += ["--max-shift", f"{self.parameterAsDouble(parameters, 'MAX_SHIFT', context):g}"]
        # `change` reads the parcels file's only layer: one named in a file is copied
        parcels, _ = self.vector_path(parameters, "PARCELS", context, feedback, named=False)
        if parcels:
            args += ["--parcels", parcels]
            field = self.parameterAsString(parameters, "ID_FIELD", context)
            if field:
                args += ["--id-field", field]
        return [*args, "--overwrite"], {"OUTPUT": out}


class SampleAlgorithm(GeodetectAlgorithm):
    NAME, TITLE, GROUP = "sample", "Draw a review sample", COUNTY_GROUP
    HELP = (
        "Draws detections stratified by score (fill 'verdict': pool / not_pool, and a "
        "'reason' for rejections) and random search squares (draw the pools the layer "
        "missed into 'missed', then set 'done' to yes): one GeoPackage to fill in QGIS."
    )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(_detections())
        self.addParameter(
            QgsProcessingParameterNumber("N", "Detections to judge", defaultValue=200, minValue=8)
        )
        self.addParameter(
            QgsProcessingParameterNumber("SQUARES", "Search squares", defaultValue=20, minValue=2)
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                "SQUARE_SIZE",
                "Search square side (m)",
                QgsProcessingParameterNumber.Double,
                defaultValue=100,
                minValue=1,
            )
        )
        self.addParameter(QgsProcessingParameterNumber("SEED", "Seed", defaultValue=0))
        self.addParameter(
            QgsProcessingParameterFileDestination(
                "OUTPUT", "Review", fileFilter="GeoPackage (*.gpkg)"
            )
        )

    def arguments(self, parameters, context, feedback):
        found, _ = self.vector_path(parameters, "DETECTIONS", context, feedback, whole_file=True)
        out = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        args = ["sample", found, "--out", out]
        for option, name in (("--n", "N"), ("--squares", "SQUARES"), ("--seed", "SEED")):
            args += [option, str(self.parameterAsInt(parameters, name, context))]
        args += ["--square-size", f"{self.parameterAsDouble(parameters, 'SQUARE_SIZE', context):g}"]
        return [*args, "--overwrite"], {"OUTPUT": out}

    # The layers a reviewer fills, opened in the project when the run ends (with the
    # styles the GeoPackage holds); the strata table is only read by the estimate.
    REVIEW_LAYERS = (
        ("review", "Review: judge each detection"),
        ("squares", "Review: search squares"),
        ("missed", "Review: draw the missed pools"),
    )

    def finish(self, result, results, parameters, context, feedback):
        for layer, title in self.REVIEW_LAYERS:
            details = QgsProcessingContext.LayerDetails(title, context.project(), layer)
            context.addLayerToLoadOnCompletion(f"{results['OUTPUT']}|layername={layer}", details)
        return super().finish(result, results, parameters, context, feedback)


class EstimateAlgorithm(GeodetectAlgorithm):
    NAME, TITLE, GROUP = "estimate", "Estimate the count from a review", COUNTY_GROUP
    HELP = (
        "Turns a filled review into the total count and water area with 95 % confidence "
        "intervals (precision per score stratum, recall from the search squares) and the "
        "share of each rejection reason; written as JSON."
    )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(_detections())
        self.addParameter(
            QgsProcessingParameterFile("REVIEWED", "The filled review", extension="gpkg")
        )
        self.addParameter(
            QgsProcessingParameterBoolean(
                "PARTIAL", "Estimate from an unfinished review", defaultValue=False
            )
        )
        self.addParameter(
            QgsProcessingParameterFileDestination(
                "OUTPUT", "Estimate (JSON)", fileFilter="JSON (*.json)"
            )
        )

    def arguments(self, parameters, context, feedback):
        found, _ = self.vector_path(parameters, "DETECTIONS", context, feedback, whole_file=True)
        reviewed = self.parameterAsFile(parameters, "REVIEWED", context)
        args = ["estimate", found, "--reviewed", reviewed, "--json"]
        if self.parameterAsBool(parameters, "PARTIAL", context):
            args.append("--partial")
        return args, {"OUTPUT": self.parameterAsFileOutput(parameters, "OUTPUT", context)}

    def finish(self, result, results, parameters, context, feedback):
        e = _json_output(result, results)
        feedback.pushInfo(
            f"{e['pools']:.0f} pools (95 % CI {e['pools_low']:.0f}-{e['pools_high']:.0f})"
        )
        return results


ALGORITHMS = [
    DetectAlgorithm,
    TrainAlgorithm,
    EvaluateAlgorithm,
    ParcelsAlgorithm,
    ChangeAlgorithm,
    SampleAlgorithm,
    EstimateAlgorithm,
]
