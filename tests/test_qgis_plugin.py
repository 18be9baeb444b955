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
import pandas as pd
import pytest
import rasterio
import test_change
import test_parcels
from servers import file_server

from conftest import SAMPLE_DATA, run_cli

QGIS_PROCESS = shutil.which("qgis_process.bin") or shutil.which("qgis_process")
PLUGIN_DIR = SAMPLE_DATA.parent / "geodetect" / "qgis_plugin" / "geodetect_processing"
needs_qgis = pytest.mark.skipif(QGIS_PROCESS is None, reason="qgis_process is not installed")
# The county tests' inputs, fixtures here too: two flights with known changes, and
# parcels with a roll and their expected statuses.
flights = test_change.flights
parcel_county = test_parcels.county


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
# layers the context asks to load (qgis_process has no project and loads nothing). The
# algorithm's log (what the dialog's Log tab shows) goes to stderr; given a glob as
# argv[4], the run is cancelled as the dialog's Cancel button does it (feedback.cancel()
# from another thread) once a file matches it.
PYQGIS_RUN = """
import glob, json, sys, threading, time
from qgis.core import (QgsApplication, QgsProcessingContext, QgsProcessingFeedback,
                       QgsProject, QgsRasterLayer, QgsVectorLayer)
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
class Feedback(QgsProcessingFeedback):
    def pushInfo(self, info):
        print(info, file=sys.stderr, flush=True)

    def pushCommandInfo(self, info):
        print(info, file=sys.stderr, flush=True)

    def reportError(self, error, fatalError=False):
        print(error, file=sys.stderr, flush=True)

feedback = Feedback()
if len(sys.argv) > 4:
    def cancel_once_there(pattern=sys.argv[4]):
        while not glob.glob(pattern):
            time.sleep(0.01)
        feedback.cancel()
    threading.Thread(target=cancel_once_there, daemon=True).start()
processing.run(sys.argv[2], parameters, context=context, feedback=feedback)
loaded = []
for uri, details in context.layersToLoadOnCompletion().items():
    layer = QgsVectorLayer(uri, details.name, "ogr")
    loaded.append({"name": details.name, "valid": layer.isValid(),
                   "features": layer.featureCount(), "style": layer.styleManager().currentStyle(),
                   "renderer": layer.renderer().type() if layer.renderer() else None})
print(json.dumps(loaded))
"""


def _pyqgis_run(tmp_path, algorithm, parameters, *, cancel_when=None):
    """Run ``algorithm`` as the Toolbox does (cancelled once a file matches the glob
    ``cancel_when``); the finished process, its log on stderr."""
    python = "/usr/bin/python3"
    script = tmp_path / "run_in_qgis.py"
    script.write_text(PYQGIS_RUN)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", XDG_RUNTIME_DIR=str(tmp_path),
               QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / "cfg"))  # fmt: skip
    env[_runner().ENV_COMMAND] = f"{sys.executable} -m geodetect"
    argv = [python, script, PLUGIN_DIR.parent, algorithm, json.dumps(parameters)]
    if cancel_when is not None:
        argv.append(cancel_when)
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)


def _pyqgis(tmp_path, algorithm, parameters, *, fails=False):
    """Run ``algorithm`` as the Toolbox does; the layers it loads, or with ``fails``
    its error output (it must fail)."""
    proc = _pyqgis_run(tmp_path, algorithm, parameters)
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


def _same_features(a: gpd.GeoDataFrame, b: gpd.GeoDataFrame) -> None:
    """The same features in the same order: every attribute, the CRS, geometries to 1e-9
    of a unit."""
    assert len(a) == len(b) > 0, (len(a), len(b))
    assert list(a.columns) == list(b.columns) and a.crs == b.crs
    attributes = [c for c in a.columns if c != a.geometry.name]
    pd.testing.assert_frame_equal(a[attributes], b[attributes], check_exact=True)
    assert a.geometry.geom_equals_exact(b.geometry, tolerance=1e-9).all()


def _log(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


@needs_qgis
@pytest.mark.slow
def test_train_in_qgis_writes_a_model_that_loads(untrained_model, tmp_path):
    """Train from the Toolbox on the sample scene, its labels a layer inside a
    GeoPackage, continuing the suite's tiny model (a new model would first build the
    synthetic start: minutes) for 3 counted steps (the budget left at its 30 minutes):
    one model file that loads, with the labels' 69 objects, the steps and the model it
    resumed recorded."""
    from geodetect.model import load_model

    scene, truth = SAMPLE_DATA / "train" / "scene.tif", SAMPLE_DATA / "train" / "truth.gpkg"
    out = tmp_path / "trained.model"
    proc = _pyqgis_run(tmp_path, "geodetect:train",
                       {"INPUT": [str(scene)], "LABELS": f"{truth}|layername=pools",
                        "RESUME": str(untrained_model), "STEPS": 3,
                        "OUTPUT": str(out)})  # fmt: skip
    log = _log(proc)
    assert f"--labels {truth} --layer pools" in log  # the layer inside the GeoPackage
    assert "--max-minutes 30 --steps 3" in log
    loaded = load_model(out)
    assert loaded.spec.classes == ["pool"] and loaded.spec.chip_size == 64
    training = loaded.spec.training
    assert training["objects"] == 69
    assert training["source"]["images"] == [str(scene)]
    assert training["resumed_from"] == str(untrained_model) and training["start"] == "resumed"
    assert training["stop_reason"] == "steps" and training["steps"] == 3


@needs_qgis
def test_parcels_in_qgis_gives_the_command_lines_layer(parcel_county, tmp_path):
    """The parcel join from the Toolbox, the parcels a layer of a GeoPackage that holds
    another (in EPSG:4326, the detections in UTM): the command line's parcels, statuses
    and summary, for the same inputs."""
    detections, parcels, expected = parcel_county
    source = tmp_path / "parcels.gpkg"
    parcels.iloc[:2].to_file(source, layer="other")  # a layer before the parcels
    parcels.to_crs("EPSG:4326").to_file(source, layer="parcels")
    cli_out, qgis_out = tmp_path / "cli.gpkg", tmp_path / "qgis.gpkg"
    cli = run_cli("parcels", detections, "--parcels", source, "--parcels-layer", "parcels",
                  "--roll-field", "POOLS", "--id-field", "APN", "--min-area", "10",
                  "--out", cli_out)  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    log = _log(_pyqgis_run(tmp_path, "geodetect:parcels",
                           {"DETECTIONS": str(detections), "PARCELS": f"{source}|layername=parcels",
                            "ID_FIELD": "APN", "ROLL_FIELD": "POOLS", "MIN_AREA": 10,
                            "OUTPUT": str(qgis_out)}))  # fmt: skip
    assert cli.stdout.strip() and cli.stdout.rstrip() in log  # the same summary table
    a, b = (gpd.read_file(p, layer="parcels") for p in (cli_out, qgis_out))
    _same_features(a, b)
    assert dict(zip(b["APN"], b["status"], strict=True)) == expected


@needs_qgis
@pytest.mark.slow
def test_change_in_qgis_gives_the_command_lines_layer(flights, tmp_path):
    """Change between two flights from the Toolbox (the new one GeoJSON in EPSG:4326
    with its coverage beside it), with parcels picked as a layer of a GeoPackage that
    holds another too, as `geodetect synth --county` writes them: the command line's
    layer and summary for the same flights and parcels."""
    import shapely

    X0, Y0 = test_change.X0, test_change.Y0
    old, new, counts = flights
    parcels = gpd.GeoDataFrame(
        {"APN": ["west", "east"]},
        geometry=[shapely.box(X0, Y0, X0 + 150, Y0 + 300),
                  shapely.box(X0 + 150, Y0, X0 + 300, Y0 + 300)],
        crs="EPSG:32617",
    )  # fmt: skip
    parcels.to_file(tmp_path / "parcels.gpkg")  # for the command line: one layer
    both = tmp_path / "county.gpkg"  # for QGIS: a layer of a file with two
    parcels.to_file(both, layer="parcels")
    parcels.assign(APN=["a", "b"]).to_file(both, layer="truth")
    cli_out, qgis_out = tmp_path / "cli.gpkg", tmp_path / "qgis.gpkg"
    cli = run_cli("change", old, new, "--out", cli_out, "--max-shift", "2.5",
                  "--parcels", tmp_path / "parcels.gpkg", "--id-field", "APN")  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    log = _log(_pyqgis_run(tmp_path, "geodetect:change",
                           {"OLD": str(old), "NEW": str(new), "MAX_SHIFT": 2.5,
                            "PARCELS": f"{both}|layername=parcels", "ID_FIELD": "APN",
                            "OUTPUT": str(qgis_out)}))  # fmt: skip
    assert cli.stdout.strip() and cli.stdout.rstrip() in log  # the same table and shift
    a, b = (gpd.read_file(p, layer="change") for p in (cli_out, qgis_out))
    _same_features(a, b)
    assert b["status"].value_counts().to_dict() == counts
    assert set(b["parcel"]) == {"west", "east"}


def _filled_review(tmp_path):
    """The estimate tests' county (tests/test_estimate.py) as a detections file, and a
    review of it drawn by `geodetect sample` and filled as a careful reviewer would."""
    from test_estimate import _county, _fill

    from geodetect.io.export import write_batches
    from geodetect.io.review import read_review

    layer, truth, found = _county()
    pools = tmp_path / "pools.gpkg"
    write_batches([layer.detections], pools, extra={"coverage": layer.coverage})
    review = tmp_path / "review.gpkg"
    sampled = run_cli("sample", pools, "--n", "120", "--squares", "12", "--square-size",
                      "150", "--seed", "4", "--out", review)  # fmt: skip
    assert sampled.returncode == 0, sampled.stderr
    items, squares, _, _ = read_review(review)
    drawn = type("R", (), {"items": items, "squares": squares})
    items, squares, missed = _fill(drawn, truth, found, np.random.default_rng(0))
    items.to_file(review, layer="review")
    squares.to_file(review, layer="squares")
    missed.to_file(review, layer="missed")
    return pools, review, items


def _estimates(tmp_path, pools, reviewed, *, partial=False):
    """`geodetect estimate --json` and the Toolbox's estimate of the same review: the
    command line's run, the Toolbox's, and the JSON file the Toolbox writes."""
    out = tmp_path / f"{reviewed.stem}-{'partial' if partial else 'whole'}.json"
    cli = run_cli("estimate", pools, "--reviewed", reviewed, "--json",
                  *(["--partial"] if partial else []))  # fmt: skip
    proc = _pyqgis_run(tmp_path, "geodetect:estimate",
                       {"DETECTIONS": str(pools), "REVIEWED": str(reviewed),
                        "PARTIAL": partial, "OUTPUT": str(out)})  # fmt: skip
    return cli, proc, out


@needs_qgis
@pytest.mark.slow
def test_estimate_in_qgis_gives_the_command_lines_numbers(tmp_path):
    """The estimate from the Toolbox, of a filled review: the command line's JSON,
    number for number, and its headline in the log."""
    pools, review, _ = _filled_review(tmp_path)
    cli, proc, out = _estimates(tmp_path, pools, review)
    assert cli.returncode == 0, cli.stderr
    log = _log(proc)
    expected = json.loads(cli.stdout)
    assert json.loads(out.read_text()) == expected
    assert expected["squares"] == 12 and expected["pools_low"] < expected["pools"]
    headline = f"{expected['pools']:.0f} pools (95 % CI {expected['pools_low']:.0f}-"
    assert headline in log


@needs_qgis
@pytest.mark.slow
def test_an_unfinished_review_in_qgis_is_refused_unless_partial(tmp_path):
    """A review with one detection not judged: the command line's one-line refusal as
    the algorithm's error (no JSON written), and with 'Estimate from an unfinished
    review' the numbers of `--partial`."""
    pools, review, items = _filled_review(tmp_path)
    unfinished = tmp_path / "unfinished.gpkg"
    shutil.copy(review, unfinished)
    items.assign(verdict=["", *items["verdict"][1:]]).to_file(unfinished, layer="review")
    cli, proc, out = _estimates(tmp_path, pools, unfinished)
    assert cli.returncode != 0 and proc.returncode != 0 and not out.exists()
    assert "Traceback" not in cli.stderr
    error = cli.stderr.strip().splitlines()[-1].removeprefix("geodetect: error: ")
    assert "not finished" in error and "--partial" in error
    assert f"QgsProcessingException: {error}" in proc.stderr  # the algorithm's error
    cli, proc, out = _estimates(tmp_path, pools, unfinished, partial=True)
    assert cli.returncode == 0, cli.stderr
    _log(proc)
    partial = json.loads(out.read_text())
    assert partial == json.loads(cli.stdout)
    whole = json.loads(run_cli("estimate", pools, "--reviewed", review, "--json").stdout)
    assert partial["pools"] != whole["pools"]  # one detection fewer judged


def _one_tile_a_block(folder, model, side=4):
    """side x side small GeoTIFFs of noise, one block of the plugin's detection apart
    (the model's default chips and overlap, 16-chip blocks) and each inside one chip:
    a run of side² blocks of one chip each, a few tenths of a second a block."""
    from affine import Affine

    from geodetect.detect import DEFAULT_BLOCK_CHIPS
    from geodetect.detect.plan import default_chip_size, default_overlap
    from geodetect.model import load_model

    from conftest import NORTH_UP, write_geotiff

    spec = load_model(model).spec
    chip = default_chip_size(spec)
    overlap = default_overlap(spec, chip)
    stride, block = chip - overlap, DEFAULT_BLOCK_CHIPS * (chip - overlap)
    size = stride - overlap  # beside the previous chip's overlap, before the next chip
    folder.mkdir()
    rng, tiles = np.random.default_rng(5), []
    for r in range(side):
        for c in range(side):
            image = rng.integers(0, 255, size=(3, size, size), dtype=np.uint8)
            at = Affine.translation(c * block + (overlap if c else 0),
                                    r * block + (overlap if r else 0))  # fmt: skip
            tiles.append(write_geotiff(folder / f"t{r}{c}.tif", image, transform=NORTH_UP @ at))
    return tiles


@needs_qgis
@pytest.mark.slow
def test_a_detection_cancelled_in_qgis_continues_where_it_stopped(untrained_model, tmp_path):
    """Cancel a detection in the Toolbox once the journal holds a finished block (the
    dialog's Cancel: feedback.cancel()): the run stops, says how to continue, and leaves
    only the journal; the same algorithm run again reads only the blocks not done and
    writes the layer of a run never stopped, feature for feature."""
    import re

    from test_county import _identical

    tiles = _one_tile_a_block(tmp_path / "tiles", untrained_model)
    whole = tmp_path / "whole.gpkg"
    done = run_cli("detect", *tiles, "-m", untrained_model, "-o", whole)
    assert done.returncode == 0, done.stderr
    assert f"from {len(tiles)} chip(s)" in done.stderr  # one chip a block
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out, journal = out_dir / "pools.gpkg", out_dir / ".pools.gpkg.geodetect"
    parameters = {"INPUT": [str(t) for t in tiles], "MODEL": str(untrained_model),
                  "OUTPUT": str(out)}  # fmt: skip
    stopped = _pyqgis_run(tmp_path, "geodetect:detect", parameters,
                          cancel_when=str(journal / "*.parquet"))  # fmt: skip
    assert stopped.returncode != 0, stopped.stderr
    assert "cancelled; run it again with the same inputs and output to continue" in stopped.stderr
    assert [p.name for p in out_dir.iterdir()] == [journal.name]  # no output, no temp file
    finished = len(list(journal.glob("*.parquet")))
    assert 1 <= finished < len(tiles), "the run ended before the cancel reached it"
    deadline = time.monotonic() + 15  # its reader processes do not outlive it
    while subprocess.run(["pgrep", "-f", str(out)], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "reader processes outlived the cancelled run"
        time.sleep(0.2)
    log = _log(_pyqgis_run(tmp_path, "geodetect:detect", parameters))
    assert f"resuming: {finished} of {len(tiles)} block(s)" in log, log
    read = re.search(r"from (\d+) chip\(s\) \(\d+ empty, (\d+) more from the journal", log)
    assert read, log
    assert (int(read.group(1)), int(read.group(2))) == (len(tiles) - finished, finished)
    assert not journal.exists()  # removed once the layer is written
    _identical(gpd.read_file(whole, layer="detections"), gpd.read_file(out, layer="detections"))
    a, b = (gpd.read_file(p, layer="coverage") for p in (whole, out))
    assert len(a) == len(tiles) and a.equals(b)  # the blocks read before count as looked at
