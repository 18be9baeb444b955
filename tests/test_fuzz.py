"""Fuzzing the readers and the geometry with hypothesis (bounded, in-process).

Whatever bytes a file holds, the readers raise only :class:`geodetect.errors.GeodetectError`
subclasses, with a one-line message naming the file, which the CLI turns into its
``geodetect: error:`` line; never another exception type (which the CLI would report as
an unexpected error). Geometry: georeferencing round-trips through the inverse
transform, and the polygon NMS keeps a sorted, non-overlapping subset.
"""

from __future__ import annotations

import itertools
import json
import os
import struct
import tempfile
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
import torch
from affine import Affine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geodetect.errors import GeodetectError, ModelFileError
from geodetect.geometry import nms_polygons, overlap_ratio, pixel_boxes_to_map
from geodetect.io.raster import GridReader, grid_band_stats, grid_has_data, open_mosaics
from geodetect.io.vectors import read_layer
from geodetect.model import build_retinanet, load_model, read_spec, save_model

from conftest import NORTH_UP, make_tiny_spec, write_geotiff

# GEODETECT_FUZZ_EXAMPLES=2000 fuzzes harder locally; the suite keeps each test short.
EXAMPLES = int(os.environ.get("GEODETECT_FUZZ_EXAMPLES", "30"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_names = itertools.count()


@pytest.fixture(scope="module")
def folder():
    with tempfile.TemporaryDirectory(prefix="geodetect-fuzz-") as name:
        yield Path(name)


def fresh(folder: Path, suffix: str) -> Path:
    """A new file name per example: GDAL never sees stale cached content."""
    return folder / f"f{next(_names)}{suffix}"


def assert_clean(exc: BaseException, path: Path, kind: type = GeodetectError) -> None:
    assert isinstance(exc, kind), f"{type(exc).__name__}: {exc}"
    message = str(exc)
    assert "\n" not in message and str(path) in message, message


def mutate(data: bytes, flips: list[tuple[int, int]], cut: int | None) -> bytes:
    """Overwrite bytes at (relative position, value) pairs, then maybe truncate."""
    buf = bytearray(data)
    for where, value in flips:
        buf[where % len(buf)] = value
    return bytes(buf[:cut] if cut is not None else buf)


class Blob(bytes):
    """Bytes with a short repr, so hypothesis reports stay readable."""

    def __repr__(self) -> str:
        return f"<{len(self)} bytes>"


flip_lists = st.lists(st.tuples(st.integers(0, 2**31), st.integers(0, 255)), max_size=8)


# ---------------------------------------------------------------------------- rasters


@pytest.fixture(scope="module")
def geotiff_bytes(folder) -> dict[str, bytes]:
    """Small real GeoTIFFs: tiled+deflate uint8 RGB, and striped uint16 with nodata."""
    rng = np.random.default_rng(0)
    rgb = write_geotiff(
        folder / "rgb.tif",
        rng.integers(0, 255, (3, 64, 64), dtype=np.uint8),
        transform=NORTH_UP,
        compress="deflate",
    )
    u16 = write_geotiff(
        folder / "u16.tif",
        rng.integers(0, 4000, (2, 40, 50), dtype=np.uint16),
        transform=NORTH_UP,
        nodata=0,
        tiled=False,
    )
    return {"rgb": Blob(rgb.read_bytes()), "u16": Blob(u16.read_bytes())}


def _open_and_read(path: Path) -> None:
    """Everything detection does with a raster before the model sees a chip."""
    for grid in open_mosaics([path]):
        reader = GridReader(grid)
        try:
            reader.read(0, 0, 32, 32)
            reader.read(16, 16, 64, 64)
        finally:
            reader.close()
        grid_has_data(grid, max_side=16)
        grid_band_stats(grid, max_side=16)


# GDAL quotes garbled bytes in its messages, which rasterio's error callback cannot decode;
# Python reports that as "unraisable". The CLI keeps it off the terminal (checked in
# test_robustness); here it is expected noise.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@FUZZ
@given(
    payload=st.one_of(
        st.binary(max_size=2048),
        st.binary(max_size=2048).map(lambda b: b"II*\x00" + b),  # little-endian TIFF magic
        st.binary(max_size=2048).map(lambda b: b"MM\x00*" + b),
        st.text(max_size=300).map(lambda t: f"<VRTDataset {t}".encode()),
    ),
    suffix=st.sampled_from([".tif", ".vrt", ".img", ".jp2"]),
)
def test_random_bytes_as_raster(folder, payload, suffix):
    path = fresh(folder, suffix)
    path.write_bytes(payload)
    with pytest.raises(GeodetectError) as info:
        _open_and_read(path)
    assert_clean(info.value, path)


@FUZZ
@given(which=st.sampled_from(["rgb", "u16"]), flips=flip_lists, cut=st.none() | st.integers(0))
def test_damaged_geotiff(folder, geotiff_bytes, which, flips, cut):
    data = geotiff_bytes[which]
    path = fresh(folder, ".tif")
    path.write_bytes(mutate(data, flips, None if cut is None else cut % len(data)))
    try:
        _open_and_read(path)  # damage in pixel data may go unnoticed: that is fine
    except Exception as exc:  # noqa: BLE001 - the point is which types come out
        assert_clean(exc, path)


# ---------------------------------------------------------------------------- vectors

VECTOR_SUFFIXES = [".gpkg", ".geojson", ".shp", ".fgb", ".parquet", ".json", ".csv"]


@pytest.fixture(scope="module")
def vector_bytes(folder) -> dict[str, bytes]:
    """A small valid polygon layer in each single-file format."""
    x0 = 500_000.0 + 50.0 * np.arange(4)
    layer = gpd.GeoDataFrame(
        {"class": ["pool"] * 4, "score": np.linspace(0.9, 0.5, 4)},
        geometry=shapely.box(x0, 5_000_000.0, x0 + 10.0, 5_000_010.0),
        crs="EPSG:32633",
    )
    out = {}
    for suffix in (".gpkg", ".geojson", ".fgb", ".parquet"):
        path = folder / f"valid{suffix}"
        layer.to_parquet(path) if suffix == ".parquet" else layer.to_file(path)
        out[suffix] = Blob(path.read_bytes())
    return out


@FUZZ
@given(suffix=st.sampled_from(VECTOR_SUFFIXES), payload=st.binary(max_size=2048))
def test_random_bytes_as_vector_file(folder, suffix, payload):
    path = fresh(folder, suffix)
    path.write_bytes(payload)
    try:
        read_layer(path)
    except Exception as exc:  # noqa: BLE001
        assert_clean(exc, path)


@FUZZ
@given(
    suffix=st.sampled_from([".gpkg", ".geojson", ".fgb", ".parquet"]),
    flips=flip_lists,
    cut=st.none() | st.integers(0),
)
def test_damaged_vector_file(folder, vector_bytes, suffix, flips, cut):
    data = vector_bytes[suffix]
    path = fresh(folder, suffix)
    path.write_bytes(mutate(data, flips, None if cut is None else cut % len(data)))
    try:
        read_layer(path)
    except Exception as exc:  # noqa: BLE001
        assert_clean(exc, path)


# ------------------------------------------------------------------------ model files


@pytest.fixture(scope="module")
def model_file(folder) -> tuple[bytes, int]:
    """A valid model file as (length prefix + JSON header, total size). Examples write
    the header and extend the file to its size with zeros (a sparse file: valid float32
    weights, all zero) so each one costs no 45 MB write."""
    spec = make_tiny_spec(gsd=None)
    torch.manual_seed(0)
    path = save_model(build_retinanet(spec, pretrained="none"), spec, folder / "valid.model")
    with open(path, "rb") as f:
        end = 8 + struct.unpack("<Q", f.read(8))[0]
        f.seek(0)
        head = f.read(end)
    return Blob(head), path.stat().st_size


def write_model(path: Path, head: bytes, size: int) -> Path:
    with open(path, "wb") as f:
        f.write(head[:size])
        f.truncate(size)
    return path


def _load_both(path: Path) -> None:
    """read_spec and load_model both raise ModelFileError or both work."""
    try:
        read_spec(path)
    except Exception as exc:  # noqa: BLE001
        assert_clean(exc, path, ModelFileError)
    try:
        load_model(path)
    except Exception as exc:  # noqa: BLE001
        assert_clean(exc, path, ModelFileError)


@FUZZ
@given(payload=st.binary(max_size=4096))
def test_random_bytes_as_model(folder, payload):
    path = fresh(folder, ".model")
    path.write_bytes(payload)
    with pytest.raises(ModelFileError) as info:
        load_model(path)
    assert_clean(info.value, path, ModelFileError)
    with pytest.raises(ModelFileError):
        read_spec(path)


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0), st.integers(0, 255)), min_size=1, max_size=4))
def test_model_with_flipped_header_bytes(folder, model_file, flips):
    head, size = model_file
    path = write_model(fresh(folder, ".model"), mutate(head, flips, None), size)
    _load_both(path)
    path.unlink()


@FUZZ
@given(data=st.data())
def test_truncated_model(folder, model_file, data):
    head, size = model_file
    # cut in the length prefix, the JSON header, or the weights
    cut = data.draw(
        st.one_of(st.integers(0, 8), st.integers(8, len(head)), st.integers(len(head), size - 1))
    )
    path = write_model(fresh(folder, ".model"), head, cut)
    with pytest.raises(ModelFileError) as info:
        read_spec(path)
    assert_clean(info.value, path, ModelFileError)
    with pytest.raises(ModelFileError):
        load_model(path)
    path.unlink()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)
spec_keys = st.sampled_from(
    [
        "classes",
        "band_mean",
        "band_std",
        "band_names",
        "input_dtype",
        "chip_size",
        "backbone",
        "fpn_channels",
        "head_convs",
        "anchor_base_sizes",
        "anchor_scales",
        "anchor_ratios",
        "box_loss",
        "format",
        "format_version",
    ]
)
small_ints = st.integers(-4, 70)


@FUZZ
@given(
    changes=st.dictionaries(
        spec_keys, json_values | small_ints | st.lists(small_ints, max_size=6), max_size=3
    )
)
def test_model_with_edited_metadata(folder, model_file, changes):
    """Metadata rewritten with odd values (the weights stay): refused cleanly, or usable."""
    head, size = model_file
    header = json.loads(head[8:])
    meta = json.loads(header["__metadata__"]["geodetect"])
    meta.update(changes)
    header["__metadata__"]["geodetect"] = json.dumps(meta)
    raw = json.dumps(header).encode()
    new_head = struct.pack("<Q", len(raw)) + raw
    path = write_model(fresh(folder, ".model"), new_head, size - len(head) + len(new_head))
    _load_both(path)
    path.unlink()


# --------------------------------------------------------------------------- geometry


@st.composite
def affines(draw) -> Affine:
    """Non-degenerate transforms: pixel sizes 5 cm to 100 m (either sign), rotation and
    shear within a condition number of ~10, origins anywhere on a projected grid."""
    size_x = draw(st.floats(0.05, 100)) * draw(st.sampled_from([1, -1]))
    size_y = draw(st.floats(0.05, 100)) * draw(st.sampled_from([1, -1]))
    angle = draw(st.floats(-180, 180))
    shear = draw(st.floats(-45, 45))
    origin = draw(st.tuples(st.floats(-1e7, 1e7), st.floats(-1e7, 1e7)))
    return (
        Affine.translation(*origin)
        @ Affine.rotation(angle)
        @ Affine.shear(shear, 0)
        @ Affine.scale(size_x, size_y)
    )


@st.composite
def pixel_boxes(draw, min_boxes: int = 1, max_boxes: int = 20) -> np.ndarray:
    n = draw(st.integers(min_boxes, max_boxes))
    xy = draw(st.lists(st.tuples(*[st.floats(0, 10_000)] * 2), min_size=n, max_size=n))
    wh = draw(st.lists(st.tuples(*[st.floats(0.5, 500)] * 2), min_size=n, max_size=n))
    xy, wh = np.array(xy), np.array(wh)
    return np.column_stack([xy, xy + wh])


@settings(max_examples=max(50, EXAMPLES), deadline=None)
@given(transform=affines(), boxes=pixel_boxes())
def test_pixel_boxes_to_map_round_trips(transform, boxes):
    polygons = pixel_boxes_to_map(boxes, transform)
    assert len(polygons) == len(boxes)
    assert shapely.is_ccw(shapely.get_exterior_ring(polygons)).all()
    inverse = ~transform
    for box, polygon in zip(boxes, polygons, strict=True):
        ring = np.array(polygon.exterior.coords)[:4]
        back = np.array([inverse @ tuple(p) for p in ring])
        x1, y1, x2, y2 = box
        corners = np.array([(x1, y1), (x2, y1), (x2, y2), (x1, y2)])
        # a mirroring transform (negative determinant) has its ring reversed to stay CCW
        expected = corners if transform.determinant > 0 else corners[::-1]
        scale = 1 + np.abs(corners).max()
        np.testing.assert_allclose(back, expected, rtol=1e-6, atol=1e-6 * scale)


@st.composite
def scored_polygons(draw):
    n = draw(st.integers(0, 25))
    boxes = draw(pixel_boxes(n, n)) / 100.0 if n else np.empty((0, 4))  # crowded
    angle = draw(st.floats(-45, 45))
    transform = Affine.rotation(angle) @ Affine.scale(1.0, -1.0)
    polygons = pixel_boxes_to_map(boxes, transform) if n else np.empty(0, dtype=object)
    # few distinct scores, so ties happen
    scores = np.array(
        draw(st.lists(st.sampled_from([0.1, 0.5, 0.5, 0.9, 1.0]), min_size=n, max_size=n))
    )
    classes = np.array(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)), dtype=np.int64)
    return polygons, scores, classes


@settings(max_examples=max(50, EXAMPLES), deadline=None)
@given(
    data=scored_polygons(),
    threshold=st.floats(0.0, 0.95),
    metric=st.sampled_from(["iou", "ios"]),
)
def test_nms_keeps_sorted_non_overlapping_subset(data, threshold, metric):
    polygons, scores, classes = data
    keep = nms_polygons(polygons, scores, classes, threshold=threshold, metric=metric)
    n = len(polygons)
    assert keep.dtype == np.int64 and len(set(keep.tolist())) == len(keep)
    assert all(0 <= i < n for i in keep)
    assert np.all(np.diff(scores[keep]) <= 0)  # best first
    if n:
        assert scores.max() == scores[keep].max()  # the best polygon always survives
    # no two kept polygons of the same class overlap above the threshold
    for a, b in itertools.combinations(keep, 2):
        if classes[a] == classes[b]:
            ratio = overlap_ratio(polygons[[a]], polygons[[b]], metric)[0]
            assert ratio <= threshold + 1e-9, (a, b, ratio)
    # and every dropped polygon was dropped for a kept, at-least-as-good one of its class
    kept = set(keep.tolist())
    for i in set(range(n)) - kept:
        rivals = [k for k in keep if classes[k] == classes[i] and scores[k] >= scores[i]]
        assert rivals
        ratios = overlap_ratio(polygons[rivals], np.repeat(polygons[[i]], len(rivals)), metric)
        assert ratios.max() > threshold - 1e-9


def test_nms_result_does_not_depend_on_input_order():
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 30, (40, 2))
    polygons = shapely.box(xy[:, 0], xy[:, 1], xy[:, 0] + 8, xy[:, 1] + 8)
    scores = rng.uniform(0, 1, 40)  # distinct scores: a unique answer
    keep = nms_polygons(polygons, scores, threshold=0.3)
    order = rng.permutation(40)
    again = nms_polygons(polygons[order], scores[order], threshold=0.3)
    assert sorted(order[again].tolist()) == sorted(keep.tolist())
