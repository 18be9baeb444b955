"""Tests for the county-like synthetic mosaic (`geodetect.synth.landscape`) and its
pool-free land cover (`geodetect.synth.landcover`)."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from rasterio.enums import Compression, PhotometricInterp

from geodetect.errors import InputError, OutputError
from geodetect.synth.landcover import KINDS, SUBURB, LandCover
from geodetect.synth.landscape import (
    LANDCOVER_NAME,
    TILE_LAYER,
    synth_landscape,
    tile_kinds,
)
from geodetect.synth.write import POOL_LAYER, TRUTH_NAME

TILE_PX = 512
GSD = 0.3  # 154 m tiles: room for a few pools in a suburb tile
KINDS_2X2 = (("suburb", "fields"), ("urban", "suburb"))
SEED = 5


def _make(out_dir, **changes):
    args = {"seed": SEED, "tiles_x": 2, "tiles_y": 2, "tile_px": TILE_PX, "gsd": GSD}
    args["kinds"] = KINDS_2X2
    return synth_landscape(out_dir, **{**args, **changes})


@pytest.fixture(scope="module")
def landscape(tmp_path_factory):
    return _make(tmp_path_factory.mktemp("landscape"))


def _footprint(path) -> shapely.Polygon:
    with rasterio.open(path) as ds:
        return shapely.box(*ds.bounds)


def test_tiles_are_jpeg_geotiffs_on_one_lattice(landscape):
    assert [p.name for p in landscape.tile_paths] == [
        "tile_r0_c0.tif",
        "tile_r0_c1.tif",
        "tile_r1_c0.tif",
        "tile_r1_c1.tif",
    ]
    for k, path in enumerate(landscape.tile_paths):
        r, c = divmod(k, 2)
        with rasterio.open(path) as ds:
            assert (ds.width, ds.height, ds.count) == (TILE_PX, TILE_PX, 3)
            assert ds.dtypes == ("uint8",) * 3 and ds.crs.to_epsg() == 32617
            assert ds.block_shapes == [(TILE_PX, TILE_PX)] * 3  # 512-px internal tiles
            assert ds.compression == Compression.jpeg
            assert ds.photometric == PhotometricInterp.ycbcr
            # Each tile sits exactly where the mosaic's transform puts it: shared edges.
            expected = landscape.transform @ rasterio.Affine.translation(c * TILE_PX, r * TILE_PX)
            assert ds.transform.almost_equals(expected, precision=1e-9)
    footprints = [_footprint(p) for p in landscape.tile_paths]
    union = shapely.union_all(footprints)
    assert union.area == pytest.approx((2 * TILE_PX * GSD) ** 2)
    assert union.equals(shapely.box(*union.bounds))  # no gap, no overlap


def test_pools_lie_only_in_suburb_tiles(landscape):
    pools = gpd.read_file(landscape.truth_path, layer=POOL_LAYER)
    tiles = gpd.read_file(landscape.landcover_path, layer=TILE_LAYER)
    assert landscape.truth_path.name == TRUTH_NAME
    assert landscape.landcover_path.name == LANDCOVER_NAME
    assert pools.crs.to_epsg() == 32617 and tiles.crs.to_epsg() == 32617
    assert len(pools) == landscape.n_pools > 0
    assert set(pools["class"]) == {"pool"}
    assert list(pools["pool_id"]) == list(range(len(pools)))
    assert list(tiles["kind"]) == [k for row in KINDS_2X2 for k in row]
    by_name = dict(zip(tiles["tile"], tiles.geometry, strict=True))
    for name, geometry in zip(pools["tile"], pools.geometry, strict=True):
        assert by_name[name].contains(geometry)
    land = tiles[tiles["kind"] != SUBURB]
    assert (land["pools"] == 0).all()
    assert not pools.intersects(shapely.union_all(land.geometry.buffer(-1e-6))).any()
    counted = tiles.set_index("tile")["pools"]
    assert pools["tile"].value_counts().to_dict() == counted[counted > 0].to_dict()
    for path in landscape.tile_paths:
        assert by_name[path.name].equals_exact(_footprint(path), tolerance=1e-6)


def test_the_same_seed_gives_the_same_mosaic(landscape, tmp_path):
    again = _make(tmp_path / "again", workers=2)  # and any worker count
    for first, second in zip(landscape.tile_paths, again.tile_paths, strict=True):
        with rasterio.open(first) as a, rasterio.open(second) as b:
            assert np.array_equal(a.read(), b.read())
    truth = gpd.read_file(landscape.truth_path)
    assert truth.geom_equals(gpd.read_file(again.truth_path)).all()
    other = _make(tmp_path / "other", seed=SEED + 1)
    with rasterio.open(landscape.tile_paths[1]) as a, rasterio.open(other.tile_paths[1]) as b:
        assert not np.array_equal(a.read(), b.read())


def test_land_cover_windows_agree_at_their_seams():
    kinds = (("fields", "forest", "water"), ("urban", "suburb", "fields"))
    cover = LandCover(3, 0.2, kinds, 200)
    whole = cover.window(130, 150, 140, 260)  # crosses four tiles of four kinds
    parts = np.concatenate(
        [
            np.concatenate([cover.window(r, c, 70, 130) for c in (150, 280)], axis=2)
            for r in (130, 200)
        ],
        axis=1,
    )
    assert whole.shape == (3, 140, 260) and whole.dtype == np.uint8
    assert np.array_equal(whole, parts)


def test_each_land_cover_kind_draws_its_own_ground():
    cover = LandCover(3, 0.2, [list(KINDS)], 400)
    tiles = [cover.window(0, k * 400, 400, 400).astype(int) for k in range(4)]
    bluish = [float((t[2] > t[0] + 5).mean()) for t in tiles]
    assert bluish[2] > 0.15  # the lake (not a pool: it is in no truth)
    assert bluish[0] == 0 and bluish[1] < 0.01  # crops and canopies are not blue
    assert 0 < bluish[3] < 0.1  # a few blue roofs among many colours
    r, g, b = tiles[1].reshape(3, -1).mean(axis=1)  # forest
    assert g > r and g > b


def test_tile_kinds_follow_the_shares_and_the_seed():
    kinds = tile_kinds(0, 4, 5, 0.25)
    flat = [k for row in kinds for k in row]
    assert len(kinds) == 5 and all(len(row) == 4 for row in kinds)
    assert flat.count(SUBURB) == 5
    assert set(flat) == {SUBURB, *KINDS}  # every land-cover kind at least once
    assert kinds == tile_kinds(0, 4, 5, 0.25)
    assert tile_kinds(0, 2, 2, 0.0) != tile_kinds(0, 2, 2, 1.0)
    assert SUBURB not in {k for row in tile_kinds(0, 2, 2, 0.0) for k in row}
    assert {k for row in tile_kinds(0, 2, 2, 1.0) for k in row} == {SUBURB}


def test_bad_arguments_and_an_existing_landscape_are_refused(landscape, tmp_path):
    with pytest.raises(OutputError, match="already holds"):
        _make(landscape.truth_path.parent)
    with pytest.raises(InputError, match="tile kind 'lake'"):
        _make(tmp_path, kinds=(("lake", "fields"), ("urban", "suburb")))
    with pytest.raises(InputError, match="2 rows of 2"):
        _make(tmp_path, kinds=(("fields",),))
    with pytest.raises(InputError, match="suburb_share"):
        _make(tmp_path, kinds=None, suburb_share=1.5)
    with pytest.raises(InputError, match="tile_px"):
        _make(tmp_path, tile_px=10)
    with pytest.raises(InputError, match="not projected"):
        _make(tmp_path, crs="EPSG:4326")
    assert not any(tmp_path.iterdir())
