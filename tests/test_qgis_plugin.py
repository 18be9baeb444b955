"""geodetect in QGIS's Processing toolbox, checked with the real headless QGIS
(``qgis_process``) where it is installed (Debian's ``qgis`` package; `.ci/run` installs
it), and the plugin's runner (plain Python) everywhere."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from servers import file_server

from conftest import SAMPLE_DATA, run_cli

QGIS_PROCESS = shutil.which("qgis_process.bin") or shutil.which("qgis_process")
PLUGIN_DIR = SAMPLE_DATA.parent / "geodetect" / "qgis_plugin" / "geodetect_processing"
needs_qgis = pytest.mark.skipif(QGIS_PROCESS is None, reason="qgis_process is not installed")


def _runner():
    spec = importlib.util.spec_from_file_location("geodetect_qgis_runner", PLUGIN_DIR / "runner.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def qgis(tmp_path_factory):
    """A throw-away QGIS profile with the plugin installed by `geodetect qgis install`;
    returns a function running qgis_process in it."""
    if QGIS_PROCESS is None:
        pytest.skip("qgis_process is not installed")
    home = tmp_path_factory.mktemp("qgis")
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QGIS_CUSTOM_CONFIG_PATH=str(home / "cfg"))
    env["XDG_RUNTIME_DIR"] = str(home)
    env.pop(_runner().ENV_COMMAND, None)  # the command the install recorded is the one used
    proc = run_cli("qgis", "install", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "installed the geodetect plugin" in proc.stdout

    def qgis_process(*args, timeout=600):
        return subprocess.run([QGIS_PROCESS, *map(str, args)], capture_output=True, text=True,
                              env=env, timeout=timeout)  # fmt: skip

    return qgis_process


@needs_qgis
def test_the_plugin_is_enabled_and_lists_every_algorithm(qgis):
    # `geodetect qgis install` enabled it; off and on again as a user would
    assert qgis("plugins", "disable", "geodetect_processing").returncode == 0
    assert "geodetect:detect" not in qgis("list").stdout
    assert qgis("plugins", "enable", "geodetect_processing").returncode == 0
    plugins = qgis("plugins").stdout
    assert "* geodetect_processing" in plugins  # loaded, with a Processing provider
    listed = qgis("list").stdout
    for name in ("detect", "train", "evaluate", "parcels", "change", "sample", "estimate"):
        assert f"geodetect:{name}\t" in listed, listed


@needs_qgis
def test_detect_in_qgis_gives_the_command_lines_layer(qgis, untrained_model, tmp_path):
    tiles = sorted((SAMPLE_DATA / "mosaic").glob("*.tif"))
    cli_out, qgis_out = tmp_path / "cli.gpkg", tmp_path / "qgis.gpkg"
    assert run_cli("detect", *tiles, "-m", untrained_model, "-o", cli_out, "-q").returncode == 0
    inputs = [f"INPUT={t}" for t in tiles]
    proc = qgis("run", "geodetect:detect", "--", *inputs, f"MODEL={untrained_model}",
                f"OUTPUT={qgis_out}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "detect: 9 of 9 chips" in proc.stdout  # geodetect's progress reached QGIS
    a, b = gpd.read_file(cli_out), gpd.read_file(qgis_out)
    assert len(a) == len(b) > 20
    a, b = _ordered(a), _ordered(b)
    np.testing.assert_allclose(a["score"], b["score"], rtol=1e-6)
    assert a.geometry.geom_equals_exact(b.geometry, tolerance=1e-6).all()
    # the same file: its coverage layer and the style QGIS loads with it
    import pyogrio

    assert {"coverage", "layer_styles"} <= {n for n, _ in pyogrio.list_layers(qgis_out)}
    # a layer inside a GeoPackage as a vector input: evaluate against the truth's 'pools'
    result = tmp_path / "scores.json"
    proc = qgis("run", "geodetect:evaluate", "--", f"INPUT={qgis_out}",
                f"TRUTH={SAMPLE_DATA / 'mosaic' / 'truth.gpkg'}|layername=pools",
                f"OUTPUT={result}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(result.read_text())["n_truth"] == 36


@needs_qgis
@pytest.mark.slow
def test_detect_in_qgis_reads_layers_whose_source_is_a_url(untrained_model, tmp_path):
    """The tiles as layers of a project whose source is a URL (GDAL reads them over
    HTTP), as a user adds them to the map: the command line's layer of the files."""
    tiles = sorted((SAMPLE_DATA / "mosaic").glob("*.tif"))
    cli_out, url_out = tmp_path / "cli.gpkg", tmp_path / "url.gpkg"
    assert run_cli("detect", *tiles, "-m", untrained_model, "-o", cli_out, "-q").returncode == 0
    with file_server(SAMPLE_DATA / "mosaic") as (url, _):
        inputs = [{"raster": f"/vsicurl/{url}/{t.name}"} for t in tiles]
        parameters = {"INPUT": inputs, "MODEL": str(untrained_model), "OUTPUT": str(url_out)}
        _pyqgis(tmp_path, "geodetect:detect", parameters)
    a, c = _ordered(gpd.read_file(cli_out)), _ordered(gpd.read_file(url_out))
    assert len(a) == len(c) > 20
    np.testing.assert_allclose(a["score"], c["score"], rtol=1e-6)
    assert a.geometry.geom_equals_exact(c.geometry, tolerance=1e-6).all()


@needs_qgis
@pytest.mark.slow
def test_detect_in_qgis_reads_an_xyz_tile_layer_over_the_area_set(untrained_model, tmp_path):
    """An XYZ tile layer (QGIS's "XYZ Tiles" connection) with the area to read set in
    the dialog: the command line's layer of the same template and --bbox; without an
    area, one line asking for it."""
    import urllib.parse

    from rasterio.warp import transform_bounds
    from servers import xyz_tiles

    from geodetect.io.tiles import TileService

    scene = SAMPLE_DATA / "mosaic" / "scene_r0_c0.tif"
    with rasterio.open(scene) as ds:
        area = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
    zoom = TileService("https://h/{z}/{x}/{y}.png", area).zoom_for(0.3)  # the model's GSD
    xyz_tiles(scene, tmp_path / "tiles", zoom)
    cli_out, qgis_out = tmp_path / "cli.gpkg", tmp_path / "qgis.gpkg"
    with file_server(tmp_path / "tiles") as (url, _):
        template = f"{url}/{{z}}/{{x}}/{{y}}.png"
        bbox = ",".join(f"{v:.7f}" for v in area)
        done = run_cli("detect", template, "--bbox", bbox, "-m", untrained_model, "-o", cli_out)
        assert done.returncode == 0, done.stderr
        source = f"type=xyz&url={urllib.parse.quote(template, safe='')}&zmax=22&zmin=0"
        parameters = {
            "INPUT": [{"raster": source, "provider": "wms"}],
            "MODEL": str(untrained_model),
            "AREA": f"{area[0]},{area[2]},{area[1]},{area[3]} [EPSG:4326]",
            "OUTPUT": str(qgis_out),
        }
        _pyqgis(tmp_path, "geodetect:detect", parameters)
        del parameters["AREA"]
        failed = _pyqgis(tmp_path, "geodetect:detect", parameters, fails=True)
    assert "tile service covers the world; set the area" in failed
    a = _ordered(gpd.read_file(cli_out, layer="detections"))
    c = _ordered(gpd.read_file(qgis_out, layer="detections"))
    assert len(a) == len(c) > 5
    np.testing.assert_allclose(a["score"], c["score"], rtol=1e-6)
    assert a.geometry.geom_equals_exact(c.geometry, tolerance=1e-6).all()


def _ordered(layer: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Features by score, then place (scores can tie)."""
    centre = layer.geometry.centroid
    keyed = layer.assign(_x=centre.x.round(3), _y=centre.y.round(3))
    ordered = keyed.sort_values(["score", "_x", "_y"], ascending=False)
    return ordered.drop(columns=["_x", "_y"]).reset_index(drop=True)


@needs_qgis
def test_a_bad_input_is_geodetects_one_line_in_qgis(qgis, tmp_path):
    out = tmp_path / "bad.gpkg"
    tile = SAMPLE_DATA / "mosaic" / "scene_r0_c0.tif"
    proc = qgis("run", "geodetect:detect", "--", f"INPUT={tile}",
                f"MODEL={tmp_path / 'nope.model'}", f"OUTPUT={out}")  # fmt: skip
    assert proc.returncode != 0
    assert f"ERROR:\t{tmp_path / 'nope.model'}: model file not found" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def test_cancel_ends_the_runs_whole_process_group(tmp_path):
    """The runner starts a run in its own session; cancelling it stops the process and
    the processes it started (a detection's readers) and reports it cancelled."""
    runner = _runner()
    child_pid = tmp_path / "child.pid"
    script = (
        "import json, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"open({str(child_pid)!r}, 'w').write(str(child.pid))\n"
        "for i in range(600):\n"
        "    print(json.dumps({'event': 'progress', 'fraction': i / 600}), file=sys.stderr,"
        " flush=True)\n"
        "    time.sleep(0.1)\n"
    )
    events, started = [], time.monotonic()
    result = runner.run([sys.executable, "-c", script], on_progress=events.append,
                        is_canceled=lambda: len(events) >= 3)  # fmt: skip
    assert result.canceled and result.returncode != 0
    assert time.monotonic() - started < runner.GRACE_S + 10
    pid = int(child_pid.read_text())
    for _ in range(50):  # the grandchild is gone too (allow its exit to be reaped)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, 9)
        pytest.fail("the run's child process outlived the cancel")


def test_the_runner_finds_the_recorded_command_and_says_what_to_do_without_one(
    tmp_path, monkeypatch
):
    runner = _runner()
    monkeypatch.delenv(runner.ENV_COMMAND, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no geodetect on PATH
    monkeypatch.setattr(runner, "COMMAND_FILE", tmp_path / "geodetect_command.txt")
    with pytest.raises(FileNotFoundError, match="geodetect qgis install"):
        runner.geodetect_command(None)
    runner.COMMAND_FILE.write_text(f"{sys.executable} -m geodetect\n")
    assert runner.geodetect_command(None) == [sys.executable, "-m", "geodetect"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        runner.geodetect_command(str(tmp_path / "missing" / "geodetect"))


# Processing run from PyQGIS as the Toolbox runs it: a project, a context, then the
# layers the context asks to load (qgis_process has no project and loads nothing).
PYQGIS_RUN = """
import json, sys
from qgis.core import (QgsApplication, QgsProcessingContext, QgsProject, QgsRasterLayer,
                       QgsVectorLayer)
QgsApplication.setPrefixPath("/usr", True)
app = QgsApplication([], False)
app.initQgis()
sys.path.append("/usr/share/qgis/python/plugins")
from processing.core.Processing import Processing
Processing.initialize()
import processing
sys.path.insert(0, sys.argv[1])
from geodetect_processing.provider import GeodetectProvider
provider = GeodetectProvider()
assert QgsApplication.processingRegistry().addProvider(provider)
context = QgsProcessingContext()
context.setProject(QgsProject.instance())
parameters = json.loads(sys.argv[3])
# {"raster": SOURCE} stands for a raster layer of the project opened from SOURCE (a file,
# or a URL GDAL reads over the network; "provider": "wms" for an XYZ tile layer's
# source), as a user adds one to the map.
for key, value in parameters.items():
    if isinstance(value, list) and value and isinstance(value[0], dict):
        layers = [QgsRasterLayer(v["raster"], f"raster {i}", v.get("provider", "gdal"))
                  for i, v in enumerate(value)]
        assert all(layer.isValid() for layer in layers), [v["raster"] for v in value]
        QgsProject.instance().addMapLayers(layers)
        parameters[key] = [layer.id() for layer in layers]
processing.run(sys.argv[2], parameters, context=context)
loaded = []
for uri, details in context.layersToLoadOnCompletion().items():
    layer = QgsVectorLayer(uri, details.name, "ogr")
    loaded.append({"name": details.name, "valid": layer.isValid(),
                   "features": layer.featureCount(), "style": layer.styleManager().currentStyle(),
                   "renderer": layer.renderer().type() if layer.renderer() else None})
print(json.dumps(loaded))
"""


def _pyqgis(tmp_path, algorithm, parameters, *, fails=False):
    """Run ``algorithm`` as the Toolbox does; the layers it loads, or with ``fails``
    its error output (it must fail)."""
    python = "/usr/bin/python3"
    script = tmp_path / "run_in_qgis.py"
    script.write_text(PYQGIS_RUN)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", XDG_RUNTIME_DIR=str(tmp_path),
               QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / "cfg"))  # fmt: skip
    env[_runner().ENV_COMMAND] = f"{sys.executable} -m geodetect"
    proc = subprocess.run(
        [python, script, PLUGIN_DIR.parent, algorithm, json.dumps(parameters)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    if fails:
        assert proc.returncode != 0, proc.stdout
        return proc.stderr
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@needs_qgis
def test_a_review_drawn_in_qgis_opens_the_layers_to_fill(tmp_path):
    """Draw a review sample from the Toolbox: the review, its search squares and the
    layer for missed pools open in the project, each with geodetect's style."""
    import shapely

    from geodetect.io.export import write_batches

    rng = np.random.default_rng(1)
    x, y = rng.uniform(500000, 500400, 80), rng.uniform(3300000, 3300400, 80)
    found = gpd.GeoDataFrame(
        {"class": "pool", "score": rng.uniform(0.3, 1.0, 80)},
        geometry=shapely.box(x, y, x + 6, y + 4),
        crs="EPSG:32617",
    )
    coverage = gpd.GeoDataFrame(
        {"source": ["a.tif"]},
        geometry=[shapely.box(500000, 3300000, 500406, 3300404)],
        crs="EPSG:32617",
    )
    pools = write_batches([found], tmp_path / "pools.gpkg", extra={"coverage": coverage})
    out = tmp_path / "review.gpkg"
    loaded = _pyqgis(tmp_path, "geodetect:sample",
                     {"DETECTIONS": str(pools), "N": 40, "SQUARES": 4, "SQUARE_SIZE": 50,
                      "OUTPUT": str(out)})  # fmt: skip
    names = {layer["name"]: layer for layer in loaded}
    assert set(names) == {
        "Review: judge each detection", "Review: search squares", "Review: draw the missed pools"
    }  # fmt: skip
    assert all(layer["valid"] for layer in loaded)
    # the 40 drawn, and detections in the search squares, which are judged too
    assert names["Review: judge each detection"]["features"] >= 40, loaded
    assert names["Review: search squares"]["features"] == 4
    assert names["Review: draw the missed pools"]["features"] == 0
    # the style geodetect wrote into the GeoPackage (by verdict), not a single symbol
    assert names["Review: judge each detection"]["renderer"] == "categorizedSymbol", loaded
