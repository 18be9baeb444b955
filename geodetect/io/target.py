"""The target grid of a detection run: one CRS, one pixel size, one lattice for every file.

Files already on the lattice are read by windows, as they are; any other file (another
CRS, resolution or lattice origin, a GCP-only scan) is read through a warp onto the
lattice, so an object on the seam between a UTM 10 and a UTM 11 file is read whole from
one chip. Files only split into separate grids (on the same lattice) when their
radiometry differs (dtype or data bands), since each grid is normalised on its own.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform_bounds

from geodetect.errors import InputError
from geodetect.io.crs import crs_label, raster_crs
from geodetect.io.raster import (
    MosaicGrid,
    SceneInfo,
    build_mosaics,
    resample_scene,
)
from geodetect.io.units import gsd_metres, local_utm

log = logging.getLogger(__name__)

# Imagery whose pixels are within this share of the model's GSD is read at its own.
GSD_TOLERANCE = 0.15
# Imagery more than this factor coarser than the model is not resampled (finer imagery
# always is: averaging pixels down loses nothing the model would see).
MAX_FACTOR = 4.0


@dataclass(frozen=True)
class TargetChoice:
    """Where a run detects: a CRS and a north-up lattice (pixel size in CRS units)."""

    crs: CRS | None
    lattice: Affine | None  # None: every lattice group keeps its own ("native")
    gsd_m: float | None  # the lattice's pixel size in metres, where known
    # What the user should hear about the choice (said once the inputs are checked).
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # said as information


def _size_m(info: SceneInfo) -> float | None:
    return gsd_metres(info.crs, info.transform, info.width, info.height)


def choose_target(
    infos: Sequence[SceneInfo],
    *,
    model_gsd: float | None,
    gsd: str | float = "model",
    crs: str | CRS | None = None,
) -> TargetChoice:
    """The run's CRS and lattice: the first file's CRS (or ``crs``) and, with
    ``gsd="model"``, the model's GSD unless the first file is within 15 % of it (then
    its own pixels, so the usual mosaic is read without any warp) or more than 4x
    coarser (read as it is, with a warning: a few pixels per object do not come back by
    resampling); imagery finer than the model, however much, is read at the model's GSD
    (a model trained at a coarsened GSD meets its own flight's pixels). A number sets
    the pixel size in metres.
    ``gsd="native"`` keeps every file group on its own lattice (no warps; groups in
    other CRSs are merged in map coordinates)."""
    ref = infos[0]
    target_crs = raster_crs(crs, what="--crs") if crs is not None else ref.crs
    said: list[str] = []
    if crs is None and gsd != "native" and target_crs is not None and target_crs.is_geographic:
        utm = local_utm(target_crs, ref.grid.bounds)
        if utm is not None:
            target_crs = raster_crs(utm)
            said.append(
                f"{ref.path.name} is in degrees ({crs_label(ref.crs)}); detecting in "
                f"{utm.name}{_epsg(utm)} for square metre pixels, and the layer is in it "
                "(--crs chooses another)"
            )
    if crs is not None and not target_crs.is_projected:
        raise InputError(
            f"--crs {crs}: not a projected CRS; detection needs square pixels in metres, "
            "so choose a projected CRS such as the imagery's UTM zone"
        )
    if gsd == "native" or target_crs is None:
        return TargetChoice(target_crs, None, None)
    if ref.crs == target_crs:
        ref_size = ref.gsd
        ref_m = _size_m(ref)
    else:
        bounds = transform_bounds(ref.crs, target_crs, *ref.grid.bounds, densify_pts=21)
        ref_size = min((bounds[2] - bounds[0]) / ref.width, (bounds[3] - bounds[1]) / ref.height)
        located = Affine(ref_size, 0.0, bounds[0], 0.0, -ref_size, bounds[3])
        ref_m = gsd_metres(target_crs, located, ref.width, ref.height)
    size_m = ref_m
    notes: list[str] = []
    if isinstance(gsd, int | float) and not isinstance(gsd, bool):
        if not math.isfinite(gsd) or gsd <= 0:
            raise InputError(f"--gsd {gsd}: the pixel size must be positive (metres)")
        size_m = float(gsd)
    elif gsd != "model":
        raise InputError(f"--gsd {gsd}: choose 'model', 'native' or a pixel size in metres")
    elif model_gsd and ref_m and abs(ref_m / model_gsd - 1) > GSD_TOLERANCE:
        if ref_m / model_gsd <= MAX_FACTOR:
            size_m = model_gsd
        else:
            notes.append(
                f"{ref.path.name} has {ref_m:.3g} m pixels, more than {MAX_FACTOR:g}x coarser "
                f"than the model's {model_gsd:.3g} m; the imagery is read at {ref_m:.3g} m "
                "(use a model trained nearer its resolution)"
            )
    if size_m != ref_m and not target_crs.is_projected:
        notes.append(
            f"{ref.path.name} is in a geographic CRS, so it cannot be read at {size_m:.3g} m; "
            f"it is read at its own {ref_m:.3g} m (reproject it to a projected CRS, e.g. "
            "UTM, or pass --crs)"
        )
        size_m = ref_m
    scale = 1.0 if not ref_m or size_m == ref_m else size_m / ref_m
    if ref.crs == target_crs:
        # The first file's own lattice (rotation included), at the chosen pixel size.
        lattice = ref.transform @ Affine.scale(scale)
    else:
        size = ref_size * scale
        lattice = Affine(size, 0.0, bounds[0], 0.0, -size, bounds[3])
    return TargetChoice(target_crs, lattice, size_m, tuple(notes), tuple(said))


def target_grids(infos: Sequence[SceneInfo], choice: TargetChoice) -> list[MosaicGrid]:
    """The files on the target lattice, as mosaic grids sharing it (one per radiometry:
    dtype and data bands); files off the lattice are read through warps."""
    if choice.lattice is None:
        return build_mosaics(infos)
    on_grid: list[SceneInfo] = []
    warped = 0
    for info in infos:
        if info.crs == choice.crs and info.grid.offset_on(choice.lattice) is not None:
            on_grid.append(info)
        else:
            on_grid.append(resample_scene(info, choice.lattice, choice.crs))
            warped += 1
    if warped:
        log.info(
            "%d of %d file(s) in another CRS, resolution or lattice are read through a warp "
            "onto the target grid (%s, %.3g m pixels)",
            warped,
            len(infos),
            choice.crs.to_string() if choice.crs else "no CRS",
            choice.gsd_m or choice.lattice.a,
        )
    grids = build_mosaics(on_grid)
    return grids


def _epsg(crs) -> str:
    code = crs.to_epsg()
    return f", EPSG:{code}" if code else ""
