"""Writing a synthetic scene: the arguments checked, the CRS and origin chosen, the
GeoTIFF tiles rendered window by window and the truth layers, all written atomically."""

from __future__ import annotations

import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from affine import Affine
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.windows import Window
from shapely import affinity
from shapely.geometry.polygon import orient

from geodetect.errors import InputError, OutputError
from geodetect.io.crs import parse_crs, raster_crs
from geodetect.synth.objects import Vintage
from geodetect.synth.render import Renderer, Textures
from geodetect.synth.scene import Suburb

log = logging.getLogger(__name__)

POOL_LAYER = "pools"
DISTRACTOR_LAYER = "distractors"
TRUTH_NAME = "truth.gpkg"
DISTRACTORS_NAME = "distractors.gpkg"

# Cape Coral, Florida: flat, gridded and full of backyard pools.
_ANCHOR_LONLAT = (-81.95, 26.60)
_SEED_CELL_M = 10_000.0  # different seeds land in different 10 km cells
_MAX_PIXELS = 20_000 * 20_000  # the layout (not the pixels) scales with the area
_RENDER_BLOCK = 1024  # pixels per side of one render window (bounds memory)


@dataclass(frozen=True)
class SynthScene:
    """What `synth_scene` wrote.

    Attributes:
        image_paths: the GeoTIFF(s): ``[scene.tif]``, or the K×K tiles row by row.
        truth_path: ``truth.gpkg``, one layer ``pools`` (the ground truth).
        distractors_path: ``distractors.gpkg``, one layer ``distractors``.
        crs: the scene CRS as a string (``"EPSG:32617"``).
        gsd: ground sample distance in metres per pixel.
        width: width of the whole scene (all tiles) in pixels.
        height: height of the whole scene (all tiles) in pixels.
        n_pools: pools in the truth layer.
        n_distractors: features in the distractors layer.
        transform: affine transform of the whole scene (pixel edge -> map), north up.
    """

    image_paths: list[Path]
    truth_path: Path
    distractors_path: Path
    crs: str
    gsd: float
    width: int
    height: int
    n_pools: int
    n_distractors: int
    transform: Affine


def _check_crs(crs: str) -> tuple[ProjCRS, float]:
    """The CRS and its metres per unit; InputError unless it is a projected CRS."""
    proj = parse_crs(crs, what="--crs")
    if not proj.is_projected:
        raise InputError(
            f"CRS {crs!r} is not projected (its units are not linear); give a "
            "projected CRS in metres or feet such as EPSG:32617 (UTM 17N)."
        )
    factor = proj.axis_info[0].unit_conversion_factor if proj.axis_info else 1.0
    return proj, float(factor)


def _default_origin(proj: ProjCRS, seed: int, unit_m: float) -> tuple[float, float]:
    """Upper-left corner near Cape Coral, FL (or the CRS's area of use), one cell per seed."""
    lon, lat = _ANCHOR_LONLAT
    area = proj.area_of_use
    if area is not None and not (area.west <= lon <= area.east and area.south <= lat <= area.north):
        lon, lat = (area.west + area.east) / 2, (area.south + area.north) / 2
    x, y = Transformer.from_crs("EPSG:4326", proj, always_xy=True).transform(lon, lat)
    if not (math.isfinite(x) and math.isfinite(y)):
        x, y = 0.0, 0.0
    cell = _SEED_CELL_M / unit_m
    return x + ((seed % 9) - 4) * cell, y + ((seed // 9) % 9 - 4) * cell


def _snap(value: float, step: float) -> float:
    """Round to a multiple of 100 pixels so scenes at one gsd share a pixel lattice."""
    return round(value / (100 * step)) * 100 * step


def _check_args(seed, size, gsd, tiles, compress, origin) -> tuple[int, int]:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed {seed!r} is not a whole number >= 0; pass e.g. seed=0.")
    try:
        width, height = (int(v) for v in size)
    except (TypeError, ValueError):
        raise InputError(
            f"size {size!r} is not a (width, height) pair of pixel counts; "
            "pass e.g. size=(2500, 2500)."
        ) from None
    if not (64 <= width <= 100_000 and 64 <= height <= 100_000):
        raise InputError(
            f"size {width}x{height} px is out of range; each side must be 64 to 100000 pixels."
        )
    if width * height > _MAX_PIXELS:
        raise InputError(
            f"size {width}x{height} px is over {_MAX_PIXELS // 10**6} Mpx, more than the layout "
            "(held in memory, ~2 MB per Mpx) should hold; make several scenes with "
            "different origins instead."
        )
    if not (isinstance(gsd, (int, float)) and math.isfinite(gsd) and 0.05 <= gsd <= 2.0):
        raise InputError(
            f"gsd {gsd!r} m per pixel is out of range; pools are 3-14 m, so "
            "use 0.05 to 2.0 (0.3 is typical)."
        )
    if isinstance(tiles, bool) or not isinstance(tiles, (int, np.integer)) or tiles < 1:
        raise InputError(
            f"tiles {tiles!r} is not a whole number >= 1; pass e.g. tiles=2 for a 2x2 mosaic."
        )
    if min(width, height) // tiles < 32:
        raise InputError(
            f"tiles={tiles} cuts a {width}x{height} px scene into tiles under "
            "32 px; use fewer tiles or a bigger size."
        )
    if compress not in ("jpeg", "deflate"):
        raise InputError(f"compress {compress!r} is not supported; use 'jpeg' or 'deflate'.")
    if origin is not None:
        try:
            ox, oy = (float(v) for v in origin)
        except (TypeError, ValueError):
            raise InputError(
                f"origin {origin!r} is not an (x, y) pair of map "
                "coordinates; pass e.g. origin=(405000, 2942000)."
            ) from None
        if not (math.isfinite(ox) and math.isfinite(oy)):
            raise InputError(f"origin {origin!r} is not finite; pass real map coordinates.")
    return width, height


def _tile_edges(length: int, tiles: int) -> list[int]:
    return [round(i * length / tiles) for i in range(tiles + 1)]


def _image_names(tiles: int) -> list[list[str]]:
    if tiles == 1:
        return [["scene.tif"]]
    digits = len(str(tiles - 1))
    return [
        [f"scene_r{r:0{digits}d}_c{c:0{digits}d}.tif" for c in range(tiles)] for r in range(tiles)
    ]


def output_folder(
    out_dir: Path,
    existing_outputs: Callable[[Path], list[Path]],
    what: str,
    overwrite: bool,
    how: str,
) -> list[Path]:
    """Make ``out_dir`` ready for a synthetic ``what``, refusing a file in its place or
    an earlier output (``existing_outputs`` finds it) without ``overwrite`` (``how``
    says how to give it); returns the earlier output's files.

    Raises:
        OutputError: naming the folder and what to do.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir} is a file, not a folder; give a folder for the {what}.")
    existing = existing_outputs(out_dir) if out_dir.is_dir() else []
    if existing and not overwrite:
        raise OutputError(
            f"{out_dir} already holds a synthetic {what} ({existing[0].name}); "
            f"{how} or choose another folder."
        )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot create {out_dir} ({exc.strerror}); choose a writable folder."
        ) from None
    return existing


@contextmanager
def committed(
    pending: list[tuple[Path, Path]], existing: list[Path], out_dir: Path, what: str
) -> Iterator[None]:
    """Outputs written under temporary names (``pending``: (temporary, final) pairs,
    filled before or inside the block) are renamed into place when the block succeeds
    and removed when it fails (an OSError said as an OutputError naming ``what``); files
    of an earlier output (``existing``) that this one does not replace are removed."""
    try:
        yield
        for temp, final in pending:
            os.replace(temp, final)
    except BaseException as exc:
        for temp, _ in pending:
            temp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OutputError(
                f"cannot write the {what} in {out_dir} ({exc.strerror or exc}); "
                "check free space and permissions."
            ) from exc
        raise
    written = {final for _, final in pending}
    for stale in existing:  # tiles of an earlier, differently cut output
        if stale not in written:
            stale.unlink(missing_ok=True)


def _existing_outputs(out_dir: Path) -> list[Path]:
    names = ("scene.tif", TRUTH_NAME, DISTRACTORS_NAME)
    found = [out_dir / n for n in names if (out_dir / n).exists()]
    return found + sorted(out_dir.glob("scene_r*_c*.tif"))


# --------------------------------------------------------------------------- writing


def _write_raster(
    path: Path,
    renderer: Renderer,
    *,
    row0: int,
    col0: int,
    height: int,
    width: int,
    crs: CRS,
    transform: Affine,
    compress: str,
    blocksize: int = 256,
) -> None:
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 3,
        "dtype": "uint8",
        "crs": crs,
        "transform": transform @ Affine.translation(col0, row0),
        "tiled": True,
        "blockxsize": blocksize,
        "blockysize": blocksize,
        "interleave": "pixel",
        "BIGTIFF": "IF_SAFER",
    }
    if compress == "jpeg":
        profile.update(compress="jpeg", photometric="ycbcr", jpeg_quality=90)
    else:
        profile.update(compress="deflate", predictor=2, photometric="rgb")
    with rasterio.open(path, "w", **profile) as dst:
        dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
        for r in range(0, height, _RENDER_BLOCK):
            for c in range(0, width, _RENDER_BLOCK):
                h, w = min(_RENDER_BLOCK, height - r), min(_RENDER_BLOCK, width - c)
                dst.write(renderer.window(row0 + r, col0 + c, h, w), window=Window(c, r, w, h))


def _to_map(geoms, transform: Affine):
    """Pixel-space polygons -> map polygons, pixel-edge convention, exterior rings CCW."""
    moved = [
        affinity.affine_transform(
            g, (transform.a, transform.b, transform.d, transform.e, transform.c, transform.f)
        )
        for g in geoms
    ]
    return [orient(g, 1.0) for g in moved]


def pool_truth(pools, *, crs: str, transform: Affine, gsd: float) -> gpd.GeoDataFrame:
    """The truth rows of drawn pools (``Drawing.finish``'s list), outlines in map units."""
    return gpd.GeoDataFrame(
        {
            "class": ["pool"] * len(pools),
            "pool_id": [p.index for p, _ in pools],
            "condition": [p.condition for p, _ in pools],
            "occluded": [round(float(f), 3) for _, f in pools],
            "shape": [p.shape for p, _ in pools],
            "area_m2": [round(p.outline.area * gsd * gsd, 2) for p, _ in pools],
        },
        geometry=gpd.GeoSeries(_to_map([p.outline for p, _ in pools], transform), crs=crs),
    )


def _write_truth(
    path: Path,
    distractor_path: Path,
    pools,
    distractors,
    *,
    crs: str,
    transform: Affine,
    gsd: float,
) -> None:
    pool_frame = pool_truth(pools, crs=crs, transform=transform, gsd=gsd)
    distractor_frame = gpd.GeoDataFrame(
        {"kind": [k for _, k in distractors]},
        geometry=gpd.GeoSeries(_to_map([g for g, _ in distractors], transform), crs=crs),
    )
    # One layer per file, so any tool (geodetect train/evaluate included) reads the
    # truth without having to be told which layer.
    pool_frame.to_file(path, layer=POOL_LAYER, driver="GPKG", engine="pyogrio")
    distractor_frame.to_file(
        distractor_path, layer=DISTRACTOR_LAYER, driver="GPKG", engine="pyogrio"
    )


def layout(
    seed: int, width: int, height: int, gsd: float, vintage=None, *, confusers: bool = False
) -> Suburb:
    """The suburb of ``seed`` laid out (not rendered)."""
    suburb = Suburb(
        np.random.default_rng([int(seed), 1]),
        width,
        height,
        float(gsd),
        vintage,
        confusers=confusers,
    )
    suburb.build()
    return suburb


def synth_scene(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    size: tuple[int, int] = (2500, 2500),
    gsd: float = 0.3,
    tiles: int = 1,
    crs: str = "EPSG:32617",
    compress: str = "deflate",
    origin: tuple[float, float] | None = None,
    overwrite: bool = False,
    vintage: Vintage | None = None,
    confusers: bool = False,
) -> SynthScene:
    """Write a synthetic suburban orthomosaic and its pool ground truth to a folder.

    The scene is RGB uint8, north up, on the transform
    ``Affine(gsd, 0, x0, 0, -gsd, y0)`` (in CRS units) with ``(x0, y0)`` its upper-left
    corner. With ``tiles=K`` it is cut into K×K GeoTIFFs ``scene_r{r}_c{c}.tif`` on that
    one pixel grid (edges shared exactly, no overlap); otherwise it is ``scene.tif``.
    The pixels do not depend on ``tiles``. ``truth.gpkg`` holds layer ``pools`` (pool
    outlines in the scene CRS; ``class`` "pool", ``condition`` clean/green/covered,
    ``occluded`` fraction hidden by tree canopies, at most 0.4; ``shape``;
    ``area_m2``); ``distractors.gpkg`` layer ``distractors`` (``kind``: tarp, roof, car,
    pond, shadow, trampoline; court and solar with ``confusers``).

    Args:
        out_dir: folder to write into; created if missing.
        seed: the scene is a pure function of the seed and the other arguments.
        size: ``(width, height)`` of the whole scene in pixels.
        gsd: ground sample distance, metres per pixel.
        tiles: K, to write a K×K mosaic of tiles instead of one file.
        crs: any projected CRS PROJ understands (EPSG code, WKT, PROJ string).
        compress: ``"deflate"`` (lossless) or ``"jpeg"`` (YCbCr, quality 90).
        origin: ``(x0, y0)`` upper-left corner in CRS units; by default a spot near
            Cape Coral, Florida (or the CRS's area of use) that differs per seed.
        overwrite: replace a scene already in ``out_dir``.
        vintage: which of the layout's pools this flight shows, and which shrunk (see
            :class:`~geodetect.synth.objects.Vintage`); ``pool_id`` in the truth numbers
            the pools the same way in every vintage.
        confusers: also draw tennis and basketball courts and solar panels (in the
            distractors layer as ``court`` and ``solar``). Off by default: the synthetic
            start never saw them, so a model trained from it takes courts and panels for
            pools (the demo's AP50 0.957 -> 0.935 with them drawn, benchmarks/README.md),
            and every scene without them is the one drawn before they existed.

    Returns:
        A `SynthScene` describing the files written.

    Raises:
        InputError: an argument is out of range or the CRS is not projected.
        OutputError: ``out_dir`` already holds a scene and ``overwrite`` is False, or it
            cannot be written.
    """
    started = time.perf_counter()
    width, height = _check_args(seed, size, gsd, tiles, compress, origin)
    proj, unit_m = _check_crs(crs)
    out_dir = Path(out_dir)
    existing = output_folder(
        out_dir, _existing_outputs, "scene", overwrite, "use --overwrite (overwrite=True)"
    )

    rio_crs = raster_crs(proj)
    crs_name = proj.to_string() if proj.to_epsg() is None else f"EPSG:{proj.to_epsg()}"
    step = gsd / unit_m
    if origin is not None:
        x0, y0 = (float(v) for v in origin)
    else:
        x0, y0 = (_snap(v, step) for v in _default_origin(proj, int(seed), unit_m))
    transform = Affine(step, 0.0, x0, 0.0, -step, y0)

    suburb = layout(seed, width, height, gsd, vintage, confusers=confusers)
    passes, pools = suburb.draw.finish()
    laid_out = time.perf_counter()
    renderer = Renderer(passes, Textures(int(seed), float(gsd)))

    names = _image_names(tiles)
    rows, cols = _tile_edges(height, tiles), _tile_edges(width, tiles)
    token = uuid.uuid4().hex[:8]
    pending: list[tuple[Path, Path]] = []
    with committed(pending, existing, out_dir, "scene"):
        for r in range(tiles):
            for c in range(tiles):
                final = out_dir / names[r][c]
                temp = out_dir / f".{final.stem}.{token}.tmp.tif"
                pending.append((temp, final))
                _write_raster(
                    temp,
                    renderer,
                    row0=rows[r],
                    col0=cols[c],
                    height=rows[r + 1] - rows[r],
                    width=cols[c + 1] - cols[c],
                    crs=rio_crs,
                    transform=transform,
                    compress=compress,
                )
        truth = out_dir / TRUTH_NAME
        temp = out_dir / f".truth.{token}.tmp.gpkg"
        distractors = out_dir / DISTRACTORS_NAME
        temp_distractors = out_dir / f".distractors.{token}.tmp.gpkg"
        pending += [(temp_distractors, distractors), (temp, truth)]
        _write_truth(
            temp,
            temp_distractors,
            pools,
            suburb.draw.distractors,
            crs=crs_name,
            transform=transform,
            gsd=float(gsd),
        )
    log.info(
        "synth: %d pools, %d distractors; layout %.1fs, render+write %.1fs",
        len(pools),
        len(suburb.draw.distractors),
        laid_out - started,
        time.perf_counter() - laid_out,
    )
    return SynthScene(
        image_paths=[final for _, final in pending[:-2]],
        truth_path=truth,
        distractors_path=distractors,
        crs=crs_name,
        gsd=float(gsd),
        width=width,
        height=height,
        n_pools=len(pools),
        n_distractors=len(suburb.draw.distractors),
        transform=transform,
    )
