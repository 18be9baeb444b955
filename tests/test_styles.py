"""Every layer geodetect writes opens in QGIS in colour: checked in QGIS itself (its
Python, headless) where it is installed; skipped otherwise (`.ci/run` installs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely

from geodetect.detect import detect
from geodetect.io.export import write_layer

from conftest import NORTH_UP, paint_boxes, write_geotiff

QGIS_PYTHON = Path("/usr/bin/python3")
_PROBE = """
import json, sys
from qgis.core import QgsApplication, QgsRenderContext, QgsVectorLayer
app = QgsApplication([], False)
app.initQgis()
out = {}
for uri in sys.argv[1:]:
    layer = QgsVectorLayer(uri, "layer", "ogr")
    r = layer.renderer()
    attr = r.classAttribute() if hasattr(r, "classAttribute") else None
    colours = sorted({s.color().name() for s in r.symbols(QgsRenderContext())})
    out[uri] = [layer.isValid(), r.type(), attr, colours]
print(json.dumps(out))
"""


def _qgis_renderers(*uris) -> dict:
    if sys.platform != "linux" or not QGIS_PYTHON.exists():
        pytest.skip("QGIS is not installed")
    check = subprocess.run([QGIS_PYTHON, "-c", "import qgis.core"], capture_output=True)
    if check.returncode:
        pytest.skip("QGIS's Python bindings are not installed")
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    env.pop("PYTHONPATH", None)
    run = subprocess.run(
        [QGIS_PYTHON, "-c", _PROBE, *map(str, uris)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_detections_coverage_parcels_and_change_open_styled_in_qgis(tmp_path, oracle):
    image = paint_boxes(128, 128, [(40, 40, 70, 60)])
    scene = write_geotiff(tmp_path / "s.tif", image, transform=NORTH_UP)
    detect([scene], oracle, chip_size=64, overlap=32, progress=False, out=tmp_path / "p.gpkg")
    detect([scene], oracle, chip_size=64, overlap=32, progress=False, out=tmp_path / "p.fgb")
    square = shapely.box(500000, 3299970, 500030, 3300000)
    parcels = gpd.GeoDataFrame(
        {"status": ["new", "agrees"]}, geometry=[square, square], crs="EPSG:32617"
    )
    write_layer(parcels, tmp_path / "parcels.gpkg", layer="parcels", style="parcels")
    write_layer(parcels, tmp_path / "change.shp", layer="change", style="change")
    found = _qgis_renderers(
        f"{tmp_path / 'p.gpkg'}|layername=detections",
        f"{tmp_path / 'p.gpkg'}|layername=coverage",
        tmp_path / "p.fgb",
        tmp_path / "p.coverage.fgb",
        tmp_path / "parcels.gpkg",
        tmp_path / "change.shp",
    )
    kinds = [(kind, attr, len(colours)) for valid, kind, attr, colours in found.values()]
    assert all(valid for valid, *_ in found.values())
    assert kinds == [
        ("graduatedSymbol", "score", 4),
        ("singleSymbol", None, 1),
        ("graduatedSymbol", "score", 4),
        ("singleSymbol", None, 1),
        ("categorizedSymbol", "status", 6),
        ("categorizedSymbol", "status", 5),
    ]


def test_a_users_own_qml_is_kept_unless_overwrite(tmp_path):
    square = shapely.box(0, 0, 1, 1)
    layer = gpd.GeoDataFrame({"status": ["new"]}, geometry=[square], crs="EPSG:32617")
    (tmp_path / "c.qml").write_text("mine")
    write_layer(layer, tmp_path / "c.geojson", style="change")
    assert (tmp_path / "c.qml").read_text() == "mine"
    write_layer(layer, tmp_path / "c.geojson", style="change", overwrite=True)
    assert "categorizedSymbol" in (tmp_path / "c.qml").read_text()


def test_a_review_opens_styled_in_qgis(tmp_path):
    from geodetect.county import DetectionLayer
    from geodetect.county.review import draw_review, write_review

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 1000, (60, 2)) + (500000, 3300000)
    detections = gpd.GeoDataFrame(
        {"class": "pool", "score": rng.random(60), "area_m2": 36.0},
        geometry=shapely.box(xy[:, 0], xy[:, 1], xy[:, 0] + 6, xy[:, 1] + 6),
        crs="EPSG:32617",
    )
    coverage = gpd.GeoDataFrame(
        geometry=[shapely.box(500000, 3300000, 501006, 3301006)], crs="EPSG:32617"
    )
    review = draw_review(DetectionLayer("p", detections, coverage), n=20, squares=3, seed=1)
    path = write_review(review, tmp_path / "review.gpkg")
    found = _qgis_renderers(*(f"{path}|layername={n}" for n in ("review", "squares", "missed")))
    kinds = [(kind, attr, len(colours)) for valid, kind, attr, colours in found.values()]
    assert kinds == [
        ("categorizedSymbol", "stratum", 4),
        ("singleSymbol", None, 1),
        ("singleSymbol", None, 1),
    ]
