"""A county-like synthetic mosaic for speed benchmarks: GeoTIFF tiles on one lattice, most
of them pool-free land cover, about a quarter suburbs with pools, and the pools' truth.

Usage (e.g. from ``benchmarks/county_like.py``)::

    from geodetect.synth.landscape import synth_landscape

    made = synth_landscape("/tmp/county", seed=0, tiles_x=4, tiles_y=5, workers=2)
    made.tile_paths  # 20 GeoTIFFs of 5000 x 5000 px at 0.2 m (20 km²), row by row
    made.truth_path  # truth.gpkg, layer "pools": every pool, class "pool", map coordinates
    made.landcover_path  # landcover.gpkg, layer "tiles": each tile's footprint and kind

Tiles are rendered and written one at a time (each window by window), so memory does
not grow with the number of tiles; ``workers`` renders several tiles at once.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from affine import Affine

from geodetect.errors import InputError
from geodetect.io.crs import raster_crs
from geodetect.synth.landcover import FIELDS, FOREST, KINDS, SUBURB, URBAN, WATER, LandCover
from geodetect.synth.render import Renderer, Textures, _value_noise
from geodetect.synth.write import (
    POOL_LAYER,
    TRUTH_NAME,
    _check_args,
    _check_crs,
    _default_origin,
    _snap,
    _write_raster,
    committed,
    layout,
    output_folder,
    pool_truth,
)

log = logging.getLogger(__name__)

LANDCOVER_NAME = "landcover.gpkg"
TILE_LAYER = "tiles"
# Shares of the pool-free tiles; towns sit next to their suburbs, the rest is shuffled.
LAND_SHARES = {URBAN: 0.2, FIELDS: 0.35, FOREST: 0.3, WATER: 0.15}
_BLOCK_PX = 512  # internal GeoTIFF tiles, as county orthophotos are cut
_MAX_TILES = 10_000


@dataclass(frozen=True)
class SynthLandscape:
    """What `synth_landscape` wrote.

    Attributes:
        tile_paths: the GeoTIFFs ``tile_r{r}_c{c}.tif``, row by row (north first).
        kinds: ``kinds[r][c]``, each tile's kind: ``"suburb"`` (with pools) or one of
            `~geodetect.synth.landcover.KINDS` (no pools).
        truth_path: ``truth.gpkg``, one layer ``pools``.
        landcover_path: ``landcover.gpkg``, one layer ``tiles``.
        crs: the mosaic CRS as a string (``"EPSG:32617"``).
        gsd: ground sample distance in metres per pixel.
        tile_px: side of one tile in pixels.
        tiles_x: tiles per row (west to east).
        tiles_y: tiles per column (north to south).
        transform: affine transform of the whole mosaic (pixel edge -> map), north up;
            tile ``(r, c)`` is ``transform @ Affine.translation(c * tile_px, r * tile_px)``.
        n_pools: pools in the truth layer.
    """

    tile_paths: list[Path]
    kinds: tuple[tuple[str, ...], ...]
    truth_path: Path
    landcover_path: Path
    crs: str
    gsd: float
    tile_px: int
    tiles_x: int
    tiles_y: int
    transform: Affine
    n_pools: int

    @property
    def width(self) -> int:
        """Width of the whole mosaic in pixels."""
        return self.tiles_x * self.tile_px

    @property
    def height(self) -> int:
        """Height of the whole mosaic in pixels."""
        return self.tiles_y * self.tile_px

    @property
    def area_km2(self) -> float:
        return self.width * self.height * self.gsd**2 / 1e6


@dataclass(frozen=True)
class _TileJob:
    """One tile to render and write: small, so it travels to a worker process."""

    seed: int
    row: int
    col: int
    kinds: tuple[tuple[str, ...], ...]
    tile_px: int
    gsd: float
    crs_wkt: str
    crs_name: str
    transform: Affine  # of the whole mosaic
    compress: str
    path: Path


def _whole(value, name: str, low: int, high: int, example: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name} {value!r} is not a whole number; pass e.g. {example}.")
    if not low <= value <= high:
        raise InputError(f"{name} {value} is out of range; use {low} to {high}.")
    return int(value)


def _land_counts(n: int) -> dict[str, int]:
    """How many of ``n`` pool-free tiles are of each kind: the shares, rounded by largest
    remainder, and every kind at least once when there are enough tiles."""
    raw = {kind: share * n for kind, share in LAND_SHARES.items()}
    counts = {kind: math.floor(v) for kind, v in raw.items()}
    by_remainder = sorted(raw, key=lambda k: raw[k] - counts[k], reverse=True)
    for kind in by_remainder[: n - sum(counts.values())]:
        counts[kind] += 1
    if n >= len(LAND_SHARES):
        for kind in LAND_SHARES:
            if counts[kind] == 0:
                counts[max(counts, key=counts.get)] -= 1
                counts[kind] = 1
    return counts


def tile_kinds(seed: int, tiles_x: int, tiles_y: int, suburb_share: float = 0.25):
    """The kind of every tile of a ``tiles_y`` x ``tiles_x`` mosaic, rows north first.

    About ``suburb_share`` of the tiles (at least one if the share is above 0, at least
    one fewer than all if it is below 1) are ``"suburb"``; they cluster, as towns do,
    and the dense town tiles (``"urban"``) sit next to them. The other land-cover kinds
    follow `LAND_SHARES`, shuffled.

    Returns:
        tuple of ``tiles_y`` tuples of ``tiles_x`` kind names.
    """
    n = tiles_x * tiles_y
    n_suburb = round(suburb_share * n)
    if suburb_share > 0:
        n_suburb = max(n_suburb, 1)
    if suburb_share < 1 and n > 1:
        n_suburb = min(n_suburb, n - 1)
    rng = np.random.default_rng([int(seed), 32])
    # A smooth random field over the tile grid ranks the tiles: suburbs take the top,
    # so they touch each other, and the town centres come next, beside them.
    score = _value_noise(0, 0, tiles_y, tiles_x, 2.5, (int(seed) * 7919 + 32) & 0xFFFFFFFF)
    score = score + 0.35 * rng.random((tiles_y, tiles_x))
    order = np.argsort(-score.ravel(), kind="stable")
    flat = np.full(n, SUBURB, dtype=object)
    counts = _land_counts(n - n_suburb)
    rest = order[n_suburb:]
    flat[rest[: counts[URBAN]]] = URBAN
    shuffled = rng.permutation(rest[counts[URBAN] :])
    start = 0
    for kind in (FIELDS, FOREST, WATER):
        flat[shuffled[start : start + counts[kind]]] = kind
        start += counts[kind]
    grid = flat.reshape(tiles_y, tiles_x)
    return tuple(tuple(str(k) for k in row) for row in grid)


def _check_kinds(kinds, tiles_x: int, tiles_y: int) -> tuple[tuple[str, ...], ...]:
    try:
        grid = tuple(tuple(str(k) for k in row) for row in kinds)
    except TypeError:
        raise InputError(
            "kinds is not a grid of tile kinds; pass rows of names, e.g. "
            '[["suburb", "fields"], ["forest", "water"]].'
        ) from None
    if len(grid) != tiles_y or any(len(row) != tiles_x for row in grid):
        raise InputError(
            f"kinds is not {tiles_y} rows of {tiles_x} tile kinds; give one name per tile."
        )
    allowed = (SUBURB, *KINDS)
    bad = sorted({k for row in grid for k in row} - set(allowed))
    if bad:
        raise InputError(f"tile kind {bad[0]!r} is unknown; use one of {', '.join(allowed)}.")
    return grid


def _tile_name(row: int, col: int, tiles_x: int, tiles_y: int) -> str:
    return f"tile_r{row:0{len(str(tiles_y - 1))}d}_c{col:0{len(str(tiles_x - 1))}d}.tif"


def _suburb_seed(seed: int, row: int, col: int) -> int:
    """Each suburb tile its own layout, a pure function of the seed and its place."""
    return int(np.random.SeedSequence([seed, 33, row, col]).generate_state(1)[0])


def _render_tile(job: _TileJob) -> gpd.GeoDataFrame | None:
    """Write one tile to ``job.path``; for a suburb, return its pools' truth rows."""
    started = time.perf_counter()
    kind = job.kinds[job.row][job.col]
    row0, col0 = job.row * job.tile_px, job.col * job.tile_px
    tile_transform = job.transform @ Affine.translation(col0, row0)
    pools = None
    if kind == SUBURB:
        # A suburb of its own, drawn in its own pixel frame: the tile's origin is (0, 0).
        seed = _suburb_seed(job.seed, job.row, job.col)
        suburb = layout(seed, job.tile_px, job.tile_px, job.gsd)
        passes, pools = suburb.draw.finish()
        renderer = Renderer(passes, Textures(seed, job.gsd))
        row0, col0, transform = 0, 0, tile_transform
    else:
        # Land cover is drawn in mosaic pixels, so roads and the river cross tile edges.
        renderer = LandCover(job.seed, job.gsd, job.kinds, job.tile_px)
        transform = job.transform
    _write_raster(
        job.path,
        renderer,
        row0=row0,
        col0=col0,
        height=job.tile_px,
        width=job.tile_px,
        crs=raster_crs(job.crs_wkt),
        transform=transform,
        compress=job.compress,
        blocksize=_BLOCK_PX,
    )
    log.info(
        "landscape: %s tile r%d c%d in %.1fs",
        kind,
        job.row,
        job.col,
        time.perf_counter() - started,
    )
    if pools is None:
        return None
    return pool_truth(pools, crs=job.crs_name, transform=tile_transform, gsd=job.gsd)


def _existing_outputs(out_dir: Path) -> list[Path]:
    found = [out_dir / n for n in (TRUTH_NAME, LANDCOVER_NAME) if (out_dir / n).exists()]
    return found + sorted(out_dir.glob("tile_r*_c*.tif"))


def synth_landscape(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    tiles_x: int = 4,
    tiles_y: int = 5,
    tile_px: int = 5000,
    gsd: float = 0.2,
    suburb_share: float = 0.25,
    crs: str = "EPSG:32617",
    compress: str = "jpeg",
    origin: tuple[float, float] | None = None,
    kinds=None,
    workers: int = 1,
    overwrite: bool = False,
) -> SynthLandscape:
    """Write a county-like synthetic mosaic of GeoTIFF tiles and its pool truth to a folder.

    The mosaic is ``tiles_y`` rows of ``tiles_x`` tiles, each ``tile_px`` pixels square
    (the defaults: 4 x 5 tiles of 1 km² at 0.2 m, 20 km²), RGB uint8, north up, on the
    one transform ``Affine(gsd, 0, x0, 0, -gsd, y0)`` (``(x0, y0)`` its upper-left
    corner): tiles share edges exactly, with no overlap. Each file is internally tiled in
    512-px blocks and, by default, JPEG compressed in YCbCr (quality 90) as county
    orthophotos are. About ``suburb_share`` of the tiles are synthetic suburbs with pools
    (the generator of `~geodetect.synth.synth_scene`, one layout per tile); the others
    are pool-free land cover (`~geodetect.synth.landcover.LandCover`: crop fields, forest,
    lakes and a river, roads, dense town roofs, some blue). Only the suburbs' pools are
    pools: lakes, rivers and blue roofs are not in the truth.

    ``truth.gpkg`` holds layer ``pools``: ``class`` "pool", ``pool_id`` (0.. over the
    mosaic, tile by tile), ``tile`` (its file name), ``condition``, ``occluded``,
    ``shape``, ``area_m2``, outlines in the mosaic CRS. ``landcover.gpkg`` holds layer
    ``tiles``: ``tile``, ``row``, ``col``, ``kind``, ``pools``, the tile's footprint.

    Args:
        out_dir: folder to write into; created if missing.
        seed: the mosaic is a pure function of the seed and the other arguments
            (``workers`` aside).
        tiles_x: tiles per row, west to east.
        tiles_y: rows of tiles, north to south.
        tile_px: side of one tile in pixels (64 to 20000).
        gsd: ground sample distance, metres per pixel.
        suburb_share: share of the tiles that are suburbs with pools (0 to 1).
        crs: any projected CRS PROJ understands (EPSG code, WKT, PROJ string).
        compress: ``"jpeg"`` (YCbCr, quality 90) or ``"deflate"`` (lossless).
        origin: ``(x0, y0)`` upper-left corner in CRS units; by default a spot near
            Cape Coral, Florida (or the CRS's area of use) that differs per seed.
        kinds: ``kinds[r][c]``, the kind of each tile (``"suburb"`` or a land-cover
            kind), instead of the seed's choice (see `tile_kinds`).
        workers: tiles rendered at once, each in its own process (peak about 0.65 GB
            each at 5000 px); 1 renders in this process.
        overwrite: replace a landscape already in ``out_dir``.

    Returns:
        A `SynthLandscape` describing the files written.

    Raises:
        InputError: an argument is out of range or the CRS is not projected.
        OutputError: ``out_dir`` already holds a landscape and ``overwrite`` is False, or
            it cannot be written.
    """
    started = time.perf_counter()
    tile_px = _whole(tile_px, "tile_px", 64, 20_000, "tile_px=5000")
    tiles_x = _whole(tiles_x, "tiles_x", 1, _MAX_TILES, "tiles_x=4")
    tiles_y = _whole(tiles_y, "tiles_y", 1, _MAX_TILES, "tiles_y=5")
    workers = _whole(workers, "workers", 1, 256, "workers=2")
    if tiles_x * tiles_y > _MAX_TILES:
        raise InputError(
            f"{tiles_x}x{tiles_y} tiles is over {_MAX_TILES}; use bigger tiles or fewer."
        )
    if not (isinstance(suburb_share, (int, float)) and 0.0 <= suburb_share <= 1.0):
        raise InputError(
            f"suburb_share {suburb_share!r} is not a share from 0 to 1; pass e.g. 0.25."
        )
    _check_args(seed, (tile_px, tile_px), gsd, 1, compress, origin)
    proj, unit_m = _check_crs(crs)
    if kinds is None:
        kinds = tile_kinds(int(seed), tiles_x, tiles_y, float(suburb_share))
    else:
        kinds = _check_kinds(kinds, tiles_x, tiles_y)

    out_dir = Path(out_dir)
    existing = output_folder(
        out_dir, _existing_outputs, "landscape", overwrite, "pass overwrite=True"
    )

    crs_name = proj.to_string() if proj.to_epsg() is None else f"EPSG:{proj.to_epsg()}"
    step = gsd / unit_m
    if origin is not None:
        x0, y0 = (float(v) for v in origin)
    else:
        x0, y0 = (_snap(v, step) for v in _default_origin(proj, int(seed), unit_m))
    transform = Affine(step, 0.0, x0, 0.0, -step, y0)

    token = uuid.uuid4().hex[:8]
    names = [[_tile_name(r, c, tiles_x, tiles_y) for c in range(tiles_x)] for r in range(tiles_y)]
    jobs = [
        _TileJob(
            seed=int(seed),
            row=r,
            col=c,
            kinds=kinds,
            tile_px=tile_px,
            gsd=float(gsd),
            crs_wkt=proj.to_wkt(),
            crs_name=crs_name,
            transform=transform,
            compress=compress,
            path=out_dir / f".{Path(names[r][c]).stem}.{token}.tmp.tif",
        )
        for r in range(tiles_y)
        for c in range(tiles_x)
    ]
    pending = [(job.path, out_dir / names[job.row][job.col]) for job in jobs]
    truth = out_dir / TRUTH_NAME
    landcover = out_dir / LANDCOVER_NAME
    temp_truth = out_dir / f".truth.{token}.tmp.gpkg"
    temp_landcover = out_dir / f".landcover.{token}.tmp.gpkg"
    pending += [(temp_landcover, landcover), (temp_truth, truth)]
    with committed(pending, existing, out_dir, "landscape"):
        if workers == 1:
            found = [_render_tile(job) for job in jobs]
        else:
            # fork, as detect's readers: workers start at once and need no importable
            # __main__; macOS's system libraries are not fork-safe, so there the default.
            context = multiprocessing.get_context("fork" if sys.platform == "linux" else None)
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                found = list(pool.map(_render_tile, jobs))
        pools, tiles = _tables(jobs, found, names, transform, crs_name)
        pools.to_file(temp_truth, layer=POOL_LAYER, driver="GPKG", engine="pyogrio")
        tiles.to_file(temp_landcover, layer=TILE_LAYER, driver="GPKG", engine="pyogrio")
    log.info(
        "landscape: %d tiles, %d pools, %.1f km² in %.1fs",
        len(jobs),
        len(pools),
        tiles_x * tiles_y * (tile_px * gsd) ** 2 / 1e6,
        time.perf_counter() - started,
    )
    return SynthLandscape(
        tile_paths=[final for _, final in pending[:-2]],
        kinds=kinds,
        truth_path=truth,
        landcover_path=landcover,
        crs=crs_name,
        gsd=float(gsd),
        tile_px=tile_px,
        tiles_x=tiles_x,
        tiles_y=tiles_y,
        transform=transform,
        n_pools=len(pools),
    )


def _tables(jobs, found, names, transform: Affine, crs: str):
    """The truth layer (pools renumbered over the mosaic) and the tile layer."""
    frames, rows = [], []
    for job, pools in zip(jobs, found, strict=True):
        name = names[job.row][job.col]
        count = 0 if pools is None else len(pools)
        if count:
            frames.append(pools.assign(tile=name))
        x0, y0 = transform @ (job.col * job.tile_px, job.row * job.tile_px)
        x1, y1 = transform @ ((job.col + 1) * job.tile_px, (job.row + 1) * job.tile_px)
        rows.append(
            {
                "tile": name,
                "row": job.row,
                "col": job.col,
                "kind": job.kinds[job.row][job.col],
                "pools": count,
                "geometry": shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)),
            }
        )
    columns = ["class", "pool_id", "tile", "condition", "occluded", "shape", "area_m2"]
    if frames:
        pools = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=crs)
    else:
        pools = gpd.GeoDataFrame({c: [] for c in columns}, geometry=[], crs=crs)
    pools["pool_id"] = np.arange(len(pools), dtype=np.int64)
    pools = pools[[*columns, "geometry"]]
    return pools, gpd.GeoDataFrame(rows, geometry="geometry", crs=crs)
