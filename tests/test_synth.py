"""Tests for the synthetic suburb generator (`geodetect.synth`) and `geodetect synth`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.warp
import shapely
from click.testing import CliRunner
from pyproj import CRS as ProjCRS
from rasterio.features import rasterize
from shapely.geometry import box

from geodetect.cli import cli
from geodetect.cli.synth import parse_size
from geodetect.errors import InputError, OutputError
from geodetect.synth import (
    CONDITIONS,
    DISTRACTOR_KINDS,
    DISTRACTOR_LAYER,
    MAX_OCCLUSION,
    POOL_LAYER,
    POOL_SHAPES,
    synth_scene,
)

SIZE = (640, 480)  # width, height: small, not square, so swapped axes would show


def _read(path: Path) -> tuple[np.ndarray, rasterio.Affine, rasterio.crs.CRS]:
    with rasterio.open(path) as ds:
        return ds.read(), ds.transform, ds.crs


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return synth_scene(tmp_path_factory.mktemp("scene"), seed=11, size=SIZE)


@pytest.fixture(scope="module")
def pools(scene) -> gpd.GeoDataFrame:
    return gpd.read_file(scene.truth_path, layer=POOL_LAYER)


def test_writes_one_rgb_geotiff_on_the_declared_grid(scene):
    assert [p.name for p in scene.image_paths] == ["scene.tif"]
    with rasterio.open(scene.image_paths[0]) as ds:
        assert (ds.width, ds.height) == SIZE
        assert ds.count == 3 and ds.dtypes == ("uint8",) * 3
        assert ds.crs.to_epsg() == 32617
        assert ds.transform == scene.transform
        assert ds.transform.a == pytest.approx(0.3) and ds.transform.e == pytest.approx(-0.3)
        assert ds.profile["tiled"] and ds.compression.name == "deflate"
    # Default origin: somewhere in Florida, on the map.
    lon, lat = rasterio.warp.transform(
        "EPSG:32617", "EPSG:4326", [scene.transform.c], [scene.transform.f]
    )
    assert -84 < lon[0] < -78 and 24 < lat[0] < 31
    assert not [p for p in scene.image_paths[0].parent.iterdir() if ".tmp" in p.name]


def test_same_seed_same_scene_other_seed_other_scene(scene, tmp_path):
    again = synth_scene(tmp_path / "again", seed=11, size=SIZE)
    other = synth_scene(tmp_path / "other", seed=12, size=SIZE)
    a, b, c = (_read(s.image_paths[0])[0] for s in (scene, again, other))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    first = gpd.read_file(scene.truth_path, layer=POOL_LAYER)
    second = gpd.read_file(again.truth_path, layer=POOL_LAYER)
    assert len(first) == len(second) == scene.n_pools
    assert all(
        g1.equals_exact(g2, 1e-9) for g1, g2 in zip(first.geometry, second.geometry, strict=True)
    )
    assert other.transform != scene.transform  # each seed gets its own spot on the map


def test_truth_is_in_the_raster_crs_and_inside_its_bounds(scene, pools):
    with rasterio.open(scene.image_paths[0]) as ds:
        crs, bounds = ds.crs, box(*ds.bounds)
    distractors = gpd.read_file(scene.distractors_path, layer=DISTRACTOR_LAYER)
    for frame in (pools, distractors):
        assert ProjCRS(frame.crs) == ProjCRS(crs.to_wkt())
        assert frame.geometry.is_valid.all()
        assert (frame.geom_type == "Polygon").all()
        assert frame.geometry.within(bounds.buffer(1e-6)).all()
    assert len(pools) > 0 and len(distractors) > 0
    assert set(distractors["kind"]) <= set(DISTRACTOR_KINDS)


def test_pool_attributes_sizes_and_no_overlap(pools):
    assert (pools["class"] == "pool").all()
    assert set(pools["condition"]) <= set(CONDITIONS)
    assert set(pools["shape"]) <= set(POOL_SHAPES)
    assert pools["occluded"].between(0.0, MAX_OCCLUSION).all()
    longest = [
        max(
            np.hypot(
                *np.diff(np.asarray(shapely.minimum_rotated_rectangle(g).exterior.coords), axis=0).T
            )
        )
        for g in pools.geometry
    ]
    assert min(longest) >= 3.0 and max(longest) <= 14.0
    geoms = pools.geometry.values
    left, right = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    assert np.all(left == right), "pools overlap"
    # Pool rings are counter-clockwise in map coordinates.
    assert all(g.exterior.is_ccw for g in pools.geometry)


@pytest.fixture(scope="module")
def suburb(tmp_path_factory):
    """A 300 m x 300 m scene: big enough for every kind of pool."""
    return synth_scene(tmp_path_factory.mktemp("suburb"), seed=4, size=(1000, 1000))


def test_many_pools_in_a_suburb_of_realistic_density(suburb):
    frame = gpd.read_file(suburb.truth_path, layer=POOL_LAYER)
    # ~90 parcels of 20-35 m; one pool per 2-4 of them (fewer where the edge cuts).
    assert 15 <= len(frame) <= 60
    assert set(frame["condition"]) == set(CONDITIONS)
    assert len(set(frame["shape"])) >= 4
    assert (frame["occluded"] > 0.05).any()  # trees hide parts of some pools
    kinds = set(gpd.read_file(suburb.distractors_path, layer=DISTRACTOR_LAYER)["kind"])
    assert {"car", "roof", "shadow"} <= kinds


def test_the_confusers_are_drawn_apart_from_the_pools(tmp_path):
    """Sports courts and solar panels, the look-alikes a real layer's false alarms come
    from, are in the suburb and its distractors layer; they never cover a pool."""
    big = synth_scene(tmp_path / "with", seed=11, size=(1500, 1500), confusers=True)
    plain = synth_scene(tmp_path / "plain", seed=11, size=(1500, 1500))
    # the same suburb: every pool where it was, only the look-alikes added
    assert gpd.read_file(plain.truth_path, layer=POOL_LAYER).geometry.equals(
        gpd.read_file(big.truth_path, layer=POOL_LAYER).geometry
    )
    kinds = set(gpd.read_file(plain.distractors_path, layer=DISTRACTOR_LAYER)["kind"])
    assert not kinds & {"court", "solar"}
    pools = gpd.read_file(big.truth_path, layer=POOL_LAYER)
    others = gpd.read_file(big.distractors_path, layer=DISTRACTOR_LAYER)
    assert set(others["kind"]) <= set(DISTRACTOR_KINDS)
    confusers = others[others["kind"].isin(["court", "solar"])]
    assert set(confusers["kind"]) == {"court", "solar"}
    assert not shapely.intersects(
        confusers.geometry.to_numpy()[:, None], pools.geometry.to_numpy()
    ).any()
    image, transform, _ = _read(big.image_paths[0])
    for geom in confusers.geometry.buffer(-0.3):  # courts and panels are not lawn
        r, g, b = _mean_under(image, transform, geom)
        assert b > r or g > r + 20 or r > g + 30, (r, g, b)


def _mean_under(image: np.ndarray, transform, geom) -> np.ndarray:
    mask = rasterize(
        [geom], out_shape=image.shape[1:], transform=transform, fill=0, dtype="uint8"
    ).astype(bool)
    assert mask.sum() >= 10
    return image[:, mask].mean(axis=1)


def test_clean_pools_are_blue_green_pools_are_green(suburb):
    image, transform, _ = _read(suburb.image_paths[0])
    frame = gpd.read_file(suburb.truth_path, layer=POOL_LAYER)
    # Shrink by a pixel so the blurred rim does not count; skip shaded pools.
    inner = frame.geometry.buffer(-0.3)
    clean = frame[(frame["condition"] == "clean") & (frame["occluded"] < 0.05)]
    assert len(clean) >= 5
    for geom in inner[clean.index]:
        r, g, b = _mean_under(image, transform, geom)
        assert b > r + 40 and b > g, (r, g, b)
    green = frame[(frame["condition"] == "green") & (frame["occluded"] < 0.05)]
    for geom in inner[green.index]:
        r, g, b = _mean_under(image, transform, geom)
        assert g > r and g > b, (r, g, b)


def test_tiles_form_one_mosaic_with_the_single_scene_pixels(scene, tmp_path):
    tiled = synth_scene(tmp_path, seed=11, size=SIZE, tiles=2)
    assert [p.name for p in tiled.image_paths] == [
        "scene_r0_c0.tif",
        "scene_r0_c1.tif",
        "scene_r1_c0.tif",
        "scene_r1_c1.tif",
    ]
    whole, whole_transform, whole_crs = _read(scene.image_paths[0])
    assert tiled.transform == whole_transform
    footprints = []
    for path in tiled.image_paths:
        with rasterio.open(path) as ds:
            assert ds.crs == whole_crs and ds.res == (0.3, 0.3)
            col, row = ~whole_transform @ (ds.transform.c, ds.transform.f)
            assert col == pytest.approx(round(col), abs=1e-9)
            assert row == pytest.approx(round(row), abs=1e-9)
            col, row = round(col), round(row)
            assert ds.transform.almost_equals(
                whole_transform @ rasterio.Affine.translation(col, row), precision=1e-9
            )
            tile = ds.read()
            assert np.array_equal(tile, whole[:, row : row + ds.height, col : col + ds.width])
            footprints.append(box(*ds.bounds))
    # Edges shared exactly, no overlap, union = the single scene's extent.
    union = shapely.union_all(footprints)
    assert union.equals(box(*rasterio.open(scene.image_paths[0]).bounds))
    assert sum(f.area for f in footprints) == pytest.approx(union.area, rel=1e-12)
    tiled_truth = gpd.read_file(tiled.truth_path, layer=POOL_LAYER)
    assert len(tiled_truth) == scene.n_pools


def test_jpeg_tiles_are_ycbcr(tmp_path):
    s = synth_scene(tmp_path, seed=3, size=(300, 300), compress="jpeg", tiles=2)
    with rasterio.open(s.image_paths[0]) as ds:
        assert ds.compression.name == "jpeg"
        assert ds.photometric.name == "ycbcr"
        assert ds.count == 3


def test_other_crs_and_feet(tmp_path):
    feet = synth_scene(tmp_path / "ft", seed=1, size=(200, 200), crs="EPSG:2236")  # FL East ftUS
    assert feet.crs == "EPSG:2236"
    assert feet.transform.a == pytest.approx(0.3 / 0.3048006096, rel=1e-6)
    frame = gpd.read_file(feet.distractors_path, layer=DISTRACTOR_LAYER)
    assert ProjCRS(frame.crs).to_epsg() == 2236
    chosen = synth_scene(tmp_path / "o", seed=1, size=(200, 200), origin=(500000.0, 3000000.0))
    assert (chosen.transform.c, chosen.transform.f) == (500000.0, 3000000.0)


def test_refuses_to_overwrite_then_replaces_and_clears_old_tiles(tmp_path):
    synth_scene(tmp_path, seed=2, size=(200, 200), tiles=2)
    with pytest.raises(OutputError, match="overwrite"):
        synth_scene(tmp_path, seed=2, size=(200, 200))
    synth_scene(tmp_path, seed=2, size=(200, 200), overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "distractors.gpkg",
        "scene.tif",
        "truth.gpkg",
    ]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"size": (20, 20)},
        {"size": (30_000, 30_000)},
        {"size": "big"},
        {"gsd": 0.0},
        {"tiles": 0},
        {"tiles": 10},
        {"crs": "EPSG:4326"},
        {"crs": "not a crs"},
        {"compress": "lzw"},
        {"seed": -1},
        {"origin": (1.0, float("nan"))},
    ],
)
def test_bad_arguments_raise_input_error(tmp_path, kwargs):
    with pytest.raises(InputError):
        synth_scene(tmp_path, **({"size": (200, 200)} | kwargs))
    assert not list(tmp_path.iterdir())


def test_parse_size():
    assert parse_size("2500") == (2500, 2500)
    assert parse_size("2500x2000") == (2500, 2000)
    with pytest.raises(InputError):
        parse_size("2500x")


def test_cli_writes_a_scene_and_refuses_to_clobber_it(tmp_path):
    out = tmp_path / "synth"
    runner = CliRunner()
    args = ["synth", str(out), "--size", "240x200", "--seed", "3", "--tiles", "2", "-q"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "pools" in result.output and "truth.gpkg" in result.output
    assert len(list(out.glob("scene_r*_c*.tif"))) == 4
    again = runner.invoke(cli, args)
    assert again.exit_code != 0 and isinstance(again.exception, OutputError)
    assert runner.invoke(cli, [*args, "--overwrite"]).exit_code == 0


def test_cli_draws_the_confusers_when_asked(tmp_path):
    args = ["synth", str(tmp_path), "--size", "1500x1500", "--seed", "11", "--gsd", "0.2"]
    result = CliRunner().invoke(cli, [*args, "--confusers", "-q"])
    assert result.exit_code == 0, result.output
    kinds = set(gpd.read_file(tmp_path / "distractors.gpkg", layer=DISTRACTOR_LAYER)["kind"])
    assert {"court", "solar"} <= kinds


def test_front_door_prints_one_error_line(tmp_path):
    exe = Path(sys.executable).with_name("geodetect")
    if not exe.exists():
        pytest.skip("the geodetect console script is not installed next to this Python")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    run = subprocess.run(
        [str(exe), "synth", str(tmp_path), "--crs", "EPSG:4326"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert run.returncode == 1
    assert run.stderr.startswith("geodetect: error: CRS 'EPSG:4326' is not projected")
    assert not list(tmp_path.iterdir())
