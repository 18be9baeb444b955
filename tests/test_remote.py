"""Imagery read over HTTP: a mosaic of tiled GeoTIFFs served by a local server with range
requests gives the layer of the same files on disk; a server that fails mid-run leaves
the finished blocks, and the rerun gives the whole layer; credentials in a URL are
written nowhere; servers that refuse, lose the file or do not answer ranges get one
line naming the input."""

from __future__ import annotations

import json
import os

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
from affine import Affine
from rasterio.warp import transform_bounds
from servers import file_server, stac_api
from shapely.geometry import box, mapping

from geodetect.detect import detect
from geodetect.errors import InputError
from geodetect.io.raster import expand_inputs, scene_info
from geodetect.io.remote import Remote, redact
from geodetect.io.stac import stac_inputs

from conftest import (
    NORTH_UP,
    assert_one_line_error,
    paint_boxes,
    random_boxes,
    run_cli,
    write_geotiff,
)

SECRET = "s3cr3t-signature"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A 2x2 mosaic of 320 x 240 px tiled GeoTIFFs with painted objects on its seams,
    served over HTTP; yields (folder, base URL, behaviour, truth boxes)."""
    root = tmp_path_factory.mktemp("served")
    rng = np.random.default_rng(5)
    boxes = random_boxes(rng, 480, 640, 30, max_size=28)
    image = paint_boxes(480, 640, boxes)
    image[2] += (np.arange(640, dtype=np.uint8)[None, :] // 5).astype(np.uint8)
    for r in (0, 240):
        for c in (0, 320):
            part = image[:, r : r + 240, c : c + 320]
            write_geotiff(
                root / f"tile_{r:03d}_{c:03d}.tif",
                part,
                transform=NORTH_UP @ Affine.translation(c, r),
                tiled=True,
                blockxsize=128,
                blockysize=128,
            )
    with file_server(root) as (url, behaviour):
        yield root, url, behaviour, boxes


def _urls(served, query: str = "") -> list[str]:
    root, url, _, _ = served
    return [f"{url}/{p.name}{query}" for p in sorted(root.glob("*.tif"))]


def test_inputs_name_files_urls_and_list_files(tmp_path):
    """URLs and GDAL paths become remote inputs (printed without credentials), a list
    file's lines are inputs (relative to it), and local files stay paths."""
    local = write_geotiff(tmp_path / "a.tif", np.zeros((3, 8, 8), np.uint8), transform=NORTH_UP)
    listing = tmp_path / "list" / "inputs.txt"
    listing.parent.mkdir()
    listing.write_text("# two inputs\n../a.tif\n\nhttps://host/b.tif?token=abc\n", encoding="utf-8")
    signed = f"https://user:pw@host/ortho/c%20d.tif?X-Amz-Signature={SECRET}&tile=2"
    found = expand_inputs([f"@{listing}", signed, "s3://bucket/e.tif", "/vsicurl/https://h/f.TIF"])
    assert found[0] == local.resolve()
    assert [type(p) for p in found[1:]] == [Remote] * 4
    assert [p.name for p in found[1:]] == ["b.tif", "c d.tif", "e.tif", "f.TIF"]
    assert str(found[2]) == "https://host/ortho/c%20d.tif?X-Amz-Signature=…&tile=2"
    assert SECRET not in repr(found) and "pw" not in str(found[2])
    assert found[4].url == "https://h/f.TIF" and found[3].url is None
    assert redact("/vsis3/bucket/x.tif") == "/vsis3/bucket/x.tif"
    # the same URL twice is one input
    assert len(expand_inputs(["https://host/b.tif", "https://host/b.tif"])) == 1
    listing.write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(InputError, match="names no inputs"):
        expand_inputs([f"@{listing}"])
    with pytest.raises(InputError, match="no such list file"):
        expand_inputs([f"@{tmp_path / 'missing.txt'}"])


def test_a_served_mosaic_gives_the_layer_of_the_files_on_disk(served, oracle):
    """The oracle over the four URLs (reader processes, the default) finds what it
    finds in the local files, feature for feature, and every read was a range."""
    root, _, behaviour, boxes = served
    kwargs = dict(chip_size=96, overlap=48, progress=False)
    local = detect(sorted(root.glob("*.tif")), oracle, **kwargs)
    behaviour.requests.clear()
    remote = detect(_urls(served), oracle, **kwargs)
    assert len(local) >= len(boxes) - 2  # the oracle finds the painted objects
    assert remote.geometry.to_wkb().tolist() == local.geometry.to_wkb().tolist()
    attributes = [c for c in local.columns if c != "geometry"]
    pd.testing.assert_frame_equal(remote[attributes], local[attributes])
    gets = [r for r in behaviour.requests if r[0] == "GET"]
    assert gets and all(r[2] and r[2].startswith("bytes=") for r in gets)


# The detect options of the command-line tests.
COMMON = ["--chip-size", "96", "--overlap", "16", "--block-size", "2"]


@pytest.fixture(scope="module")
def local_layer(served, untrained_model, tmp_path_factory) -> gpd.GeoDataFrame:
    """The tiny model's layer of the served files, read from disk by the CLI."""
    root = served[0]
    out = tmp_path_factory.mktemp("local") / "local.gpkg"
    done = run_cli(
        "detect", *sorted(root.glob("*.tif")), "--model", untrained_model, *COMMON, "--out", out
    )
    assert done.returncode == 0, done.stderr
    layer = gpd.read_file(out, layer="detections")
    assert len(layer) > 0
    return layer


def _same_layer(path, expected: gpd.GeoDataFrame) -> None:
    got = gpd.read_file(path, layer="detections")
    assert got.geometry.to_wkb().tolist() == expected.geometry.to_wkb().tolist()
    pd.testing.assert_frame_equal(got.drop(columns="geometry"), expected.drop(columns="geometry"))


def test_a_failing_server_keeps_finished_blocks_and_the_rerun_gives_the_local_layer(
    served, untrained_model, local_layer, tmp_path
):
    """One file's server fails (HTTP 503) mid-run: one line naming it (no signature),
    exit non-zero, no layer, the journal kept; the server back, the same command writes
    the layer of the local files. The signed URL's signature and the URL's password are
    in no output: layer, journal or log."""
    _, _, behaviour, _ = served
    common = ["--model", untrained_model, *COMMON]
    urls = [u.replace("http://", f"http://user:{SECRET}@") for u in _urls(served, f"?sig={SECRET}")]
    out = tmp_path / "remote.gpkg"
    journal = tmp_path / ".remote.gpkg.geodetect"
    behaviour.failing = {"tile_240_320.tif"}
    # GDAL retries a 503 three times, waiting 1, 2 then 4 s: not retried, it fails at once
    no_retry = dict(os.environ, GDAL_HTTP_MAX_RETRY="0")
    try:
        failed = run_cli("detect", *urls, *common, "--out", out, env=no_retry)
    finally:
        behaviour.failing = set()
    assert_one_line_error(failed, "tile_240_320.tif", "rerun")
    assert SECRET not in failed.stderr and "?sig=…" in failed.stderr
    assert not out.exists() and journal.is_dir()
    done = len(list(journal.glob("*.parquet")))
    # the URLs signed again (another signature): the same inputs, so the run continues
    resigned = [u.replace(SECRET, "fresh-signature") for u in urls]
    rerun = run_cli("detect", *resigned, *common, "--out", out, "--keep-journal", "-v")
    assert rerun.returncode == 0, rerun.stderr
    assert done >= 1 and f"resuming: {done} of" in rerun.stderr, rerun.stderr
    assert SECRET not in rerun.stderr and "fresh-signature" not in rerun.stderr
    for written in [out, *journal.rglob("*")]:
        if written.is_file():
            assert SECRET.encode() not in written.read_bytes(), written
            assert b"fresh-signature" not in written.read_bytes(), written
    _same_layer(out, local_layer)


@pytest.mark.parametrize(
    "case, needles",
    [
        ("missing", ["nothere.tif", "HTTP 404", "check the URL"]),
        ("forbidden", ["tile_000_000.tif", "HTTP 403", "credentials"]),
        ("no ranges", ["tile_000_000.tif", "range requests", "download"]),
        ("unreachable", ["127.0.0.1:9", "cannot reach"]),
    ],
)
def test_a_server_that_cannot_serve_chips_gets_one_line(served, case, needles):
    """Refused, missing, unreachable, or without range requests: the input named, what
    to do, before anything is read."""
    _, url, behaviour, _ = served
    target = f"{url}/tile_000_000.tif"
    if case == "missing":
        target = f"{url}/nothere.tif"
    elif case == "unreachable":
        target = "http://127.0.0.1:9/tile.tif"
    behaviour.forbidden = {"tile_000_000.tif"} if case == "forbidden" else set()
    behaviour.ranges = case != "no ranges"
    try:
        with pytest.raises(InputError) as raised:
            scene_info(Remote(target))
    finally:
        behaviour.forbidden, behaviour.ranges = set(), True
    for needle in needles:
        assert needle in str(raised.value)


def test_the_command_line_says_a_missing_url_in_one_line(served, untrained_model, tmp_path):
    _, url, _, _ = served
    out = tmp_path / "out.gpkg"
    proc = run_cli("detect", f"{url}/gone.tif", "--model", untrained_model, "--out", out)
    assert_one_line_error(proc, f"{url}/gone.tif", "HTTP 404")
    assert not out.exists()


def _item(path, href: str, *, date: str, collection: str = "ortho") -> dict:
    """A STAC item for one GeoTIFF: its footprint in WGS 84, its picture as 'visual'."""
    with rasterio.open(path) as ds:
        w, s, e, n = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": path.stem,
        "collection": collection,
        "bbox": [w, s, e, n],
        "geometry": mapping(box(w, s, e, n)),
        "properties": {"datetime": f"{date}T12:00:00Z", "updated": "2026-01-01T00:00:00Z"},
        "links": [],
        "assets": {
            "thumbnail": {"href": "thumb.png", "type": "image/png", "roles": ["thumbnail"]},
            "ortho": {"href": href, "type": "image/tiff; application=geotiff", "roles": ["visual"]},
        },
    }


def test_stac_items_on_disk_and_served_give_their_visual_assets(served, tmp_path):
    """An item collection file with relative hrefs gives the files beside it; the same
    file served over HTTP gives the served files, known to the journal by item id,
    asset and update time; --asset picks another asset, a missing one is one line."""
    root, url, _, _ = served
    files = sorted(root.glob("*.tif"))
    items = [_item(p, p.name, date="2024-05-0" + str(i + 1)) for i, p in enumerate(files)]
    catalogue = root / "items.json"
    catalogue.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    assert expand_inputs([catalogue]) == [p.resolve() for p in files]
    remote = expand_inputs([f"{url}/items.json"])
    assert [r.uri for r in remote] == [f"{url}/{p.name}" for p in files]
    assert remote[0].identity == f"stac:{files[0].stem}/ortho@2026-01-01T00:00:00Z"
    with pytest.raises(InputError, match="has no asset 'nir'.*choose one with --asset"):
        stac_inputs([str(catalogue)], asset="nir")
    (single := tmp_path / "one.json").write_text(json.dumps({**items[0], "assets": {}}))
    with pytest.raises(InputError, match="no visual asset"):
        expand_inputs([single])
    (other := tmp_path / "catalog.json").write_text(json.dumps({"type": "Catalog", "id": "c"}))
    with pytest.raises(InputError, match="not a STAC item or item collection"):
        expand_inputs([other])


def test_a_stac_api_search_through_the_command_line_gives_the_local_layer(
    served, untrained_model, local_layer, tmp_path
):
    """`detect --stac URL --collection --bbox --datetime`: the items found (two pages
    of the API's answers, one item of another collection and one of another date left
    out) are read over HTTP and give the layer of the same files on disk; a search that
    finds nothing is one line."""
    root, url, _, _ = served
    files = sorted(root.glob("*.tif"))
    items = [_item(p, f"{url}/{p.name}", date="2024-05-01") for p in files]
    items.append(_item(files[0], f"{url}/{files[0].name}", date="2024-05-01", collection="dsm"))
    items.append({**_item(files[1], f"{url}/{files[1].name}", date="2019-01-01"), "id": "old"})
    w = min(i["bbox"][0] for i in items) - 0.01
    s = min(i["bbox"][1] for i in items) - 0.01
    bbox = f"{w},{s},{w + 0.1},{s + 0.1}"
    common = ["--model", untrained_model, *COMMON]
    out = tmp_path / "stac.gpkg"
    with stac_api(items) as (api, searches):
        search = ["--stac", api, "--collection", "ortho", "--bbox", bbox]
        found = run_cli(
            "detect", *search, "--datetime", "2024-05-01/2024-05-31", *common, "--out", out
        )
        none = run_cli(
            "detect", *search, "--datetime", "2001", *common, "--out", tmp_path / "x.gpkg"
        )
    assert found.returncode == 0, found.stderr
    assert len(searches) >= 2  # the answers came in pages
    _same_layer(out, local_layer)
    assert_one_line_error(none, "found no items", "--datetime")
    # the search's terms without a STAC API (--bbox alone is also a tile service's area)
    usage = run_cli(
        "detect", "--bbox", bbox, "--collection", "ortho", *common, "--out", tmp_path / "y.gpkg"
    )
    assert usage.returncode == 2 and "--collection need --stac URL" in usage.stderr


@pytest.mark.slow
def test_credentials_set_after_the_workers_started_reach_them(served, untrained_model, tmp_path):
    """A Dask cluster started before the credentials were set (as one on other machines
    is): the run's GDAL settings travel with it, so its workers read a server that asks
    for a password, and the layer is the in-process one."""
    from dask.distributed import LocalCluster

    _, _, behaviour, _ = served
    urls = _urls(served)
    options = dict(chip_size=96, overlap=16, block_size=2, progress=False)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True) as cluster:
        behaviour.userpwd = "reader:pa55"
        try:
            with pytest.raises(InputError, match="HTTP 401"):
                detect(urls, untrained_model, **options)
            os.environ["GDAL_HTTP_USERPWD"] = "reader:pa55"  # given back after the test
            here = detect(urls, untrained_model, **options)
            there = detect(urls, untrained_model, cluster=cluster.scheduler_address, **options)
        finally:
            behaviour.userpwd = None
    # the same features; fp32 sums differ with the worker's thread count (0.1 mm, 1e-4)
    assert len(here) == len(there) > 0
    assert there.geometry.geom_equals_exact(here.geometry, tolerance=1e-4).all()
    assert np.allclose(there["score"], here["score"], atol=1e-4)


@pytest.fixture(scope="module")
def s3(served):
    """An S3-compatible server (moto's) holding the served tiles in a bucket; yields
    the tiles' s3:// URLs and the environment that points GDAL at the server."""
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    keys = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": SECRET}
    client = boto3.client(
        "s3",
        endpoint_url=f"http://{host}:{port}",
        region_name="us-east-1",
        aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
    )
    client.create_bucket(Bucket="ortho")
    urls = []
    for path in sorted(served[0].glob("*.tif")):  # public: anyone may read them
        client.upload_file(str(path), "ortho", f"2024/{path.name}", {"ACL": "public-read"})
        urls.append(f"s3://ortho/2024/{path.name}")
    nowhere = str(served[0] / "no-such-file")
    where = {
        "AWS_S3_ENDPOINT": f"{host}:{port}",
        "AWS_HTTPS": "NO",
        "AWS_VIRTUAL_HOSTING": "FALSE",
        "AWS_REGION": "us-east-1",
        # no credentials but the test's: not this machine's files nor a cloud's metadata
        "AWS_SHARED_CREDENTIALS_FILE": nowhere,
        "CPL_AWS_CREDENTIALS_FILE": nowhere,
        "AWS_CONFIG_FILE": nowhere,
        "AWS_EC2_METADATA_DISABLED": "true",
        "CPL_AWS_AUTODETECT_EC2": "NO",
    }
    try:
        yield urls, where, keys
    finally:
        server.stop()


@pytest.mark.slow
def test_a_bucket_read_with_credentials_or_anonymously_gives_the_local_layer(
    s3, untrained_model, local_layer, tmp_path
):
    """s3:// URLs from an S3-compatible server: with credentials in the environment (which
    appear nowhere), and with --no-sign-request and none; without either, one line."""
    urls, where, keys = s3
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    common = ["--model", untrained_model, *COMMON]
    signed = run_cli(
        "detect", *urls, *common, "--out", tmp_path / "signed.gpkg", "--keep-journal", "-v",
        env=clean | where | keys,
    )  # fmt: skip
    assert signed.returncode == 0, signed.stderr
    _same_layer(tmp_path / "signed.gpkg", local_layer)
    assert SECRET not in signed.stderr
    for written in tmp_path.rglob("*"):
        assert not written.is_file() or SECRET.encode() not in written.read_bytes(), written
    anonymous = tmp_path / "anonymous.gpkg"
    public = ["detect", *urls, *common, "--no-sign-request", "--out", anonymous]
    assert run_cli(*public, env=clean | where).returncode == 0
    _same_layer(anonymous, local_layer)
    refused = run_cli("detect", *urls, *common, "--out", tmp_path / "x.gpkg", env=clean | where)
    assert_one_line_error(refused, "s3://ortho/2024/tile_000_000.tif", "--no-sign-request")


def test_a_remote_file_in_strips_draws_a_warning_and_a_tiled_one_none(tmp_path, caplog):
    """Every chip of a file stored in strips reads whole rows of it over the network:
    a warning says so and how to convert it; a tiled file is read without one."""
    image = np.zeros((3, 64, 2400), dtype=np.uint8)
    write_geotiff(tmp_path / "strips.tif", image, transform=NORTH_UP, tiled=False)
    write_geotiff(tmp_path / "tiled.tif", image, transform=NORTH_UP, tiled=True)
    with file_server(tmp_path) as (url, _), caplog.at_level("WARNING", logger="geodetect"):
        scene_info(Remote(f"{url}/tiled.tif"))
        assert caplog.text == ""
        scene_info(Remote(f"{url}/strips.tif"))
    assert "strips.tif: stored in strips" in caplog.text and "gdal_translate -of COG" in caplog.text
