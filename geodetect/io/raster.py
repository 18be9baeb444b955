"""Scenes and mosaics: finding input rasters, grouping them onto shared pixel grids, and
windowed reads that return a chip plus its validity mask.

A *mosaic grid* is one virtual raster over all input files that share a CRS, a
resolution and a pixel lattice: chips are cut from it as if it were one file, so an
object that crosses a file boundary is read whole. Nothing reads a whole file at once.
"""

from __future__ import annotations

import datetime
import errno
import glob
import logging
import math
import os
import re
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import cached_property, partial
from pathlib import Path

import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio._err import CPLE_BaseError
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.transform import array_bounds
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform
from rasterio.windows import Window

from geodetect.errors import InputError, RasterError, RunError
from geodetect.geometry.boxes import boxes_overlap, points_in_boxes
from geodetect.geometry.grid import Grid, covering_window, window_box
from geodetect.io.crs import raster_crs
from geodetect.io.remote import CREDENTIALS, NETWORK_DEFAULTS, Remote, is_remote, opening, stamp
from geodetect.io.stac import is_stac, stac_inputs
from geodetect.io.tiles import SERVICES, TileService, is_service, resolve_services, service_of
from geodetect.io.units import gsd_metres, local_utm

log = logging.getLogger(__name__)

RASTER_SUFFIXES = {".tif", ".tiff", ".vrt", ".jp2", ".img"}
# What GDAL raises through rasterio: its own errors, and CPLE_* errors that rasterio passes
# on unwrapped from some calls (a warp over unusable ground control points, for one).
_GDAL_ERRORS = (RasterioError, CPLE_BaseError)

# GDAL settings for detection runs, unless the user's environment sets them. Each reader
# process keeps its own block cache, and GDAL's default (5 % of the RAM, per process)
# times the reader count can take a laptop's memory; 256 MB holds every tile a row of
# 16 chips of 512 px touches and the next row's. Readers are processes, one chip at a
# time each: GDAL's own decoding threads would only compete with them and the model.
# Network reads get the settings of :data:`~geodetect.io.remote.NETWORK_DEFAULTS`.
GDAL_DEFAULTS = {"GDAL_CACHEMAX": "256", "GDAL_NUM_THREADS": "1", **NETWORK_DEFAULTS}
# Threads describing remote files at once (each mostly waits on its server).
REMOTE_THREADS = 8
# Files near a set of points up to which first_at tests each against all the points.
FIRST_AT_NEAR = 32


def open_raster(path: str | os.PathLike) -> rasterio.DatasetReader:
    """``rasterio.open`` without its NotGeoreferencedWarning: geodetect checks the
    georeferencing itself and says what is missing (an error for detection, nothing for
    the image chips of VOC, COCO and YOLO folders, which have none by design). A
    :class:`~geodetect.io.remote.Remote` file is opened with the network's settings."""
    with warnings.catch_warnings(), opening(path):
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(path)


def configure_gdal() -> None:
    """Apply :data:`GDAL_DEFAULTS` where the environment does not set them (GDAL reads
    them when it first needs them, so call this before reading: reader processes
    inherit it)."""
    for key, value in GDAL_DEFAULTS.items():
        os.environ.setdefault(key, value)


def expand_inputs(
    inputs: Iterable[str | os.PathLike | TileService],
) -> list[Path | Remote | TileService]:
    """Turn paths, globs, folders, URLs and list files into a de-duplicated list of
    raster files (globs and folders sorted, everything else in the order given).

    A URL (``https://``, ``s3://``, ``gs://``, ``az://``) or a GDAL virtual path
    (``/vsicurl/...``) becomes a :class:`~geodetect.io.remote.Remote`; ``@FILE`` reads
    one input per line of FILE (blank lines and ``#`` comments skipped; relative paths
    from FILE's folder); a STAC item or item collection (``.json``, file or URL) gives
    each item's visual asset (:mod:`geodetect.io.stac`); a tile URL template
    (``https://host/{z}/{x}/{y}.png``) or a WMTS (``WMTS:URL,layer=NAME``) becomes a
    service value (:mod:`geodetect.io.tiles`), which
    :func:`~geodetect.io.tiles.resolve_services` reads at a pixel size.

    Raises:
        InputError: an input matches nothing, or a folder holds no rasters.
    """
    found: list[Path | Remote | TileService] = []
    for item in inputs:
        if isinstance(item, (Remote, *SERVICES)):
            found.append(item)
            continue
        text = os.fspath(item)
        if is_service(text):
            found.append(service_of(text))
        elif is_stac(text):
            found.extend(expand_inputs(stac_inputs([text])))
        elif is_remote(text):
            found.append(Remote(text))
        elif text.startswith("@"):
            found.extend(expand_inputs(_list_file(Path(text[1:]))))
        elif any(ch in text for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True))
            if not matches:
                raise InputError(f"{text}: no file matches this pattern; check the path")
            found.extend(m for m in matches if m.is_file())
        elif Path(text).is_dir():
            files = sorted(
                p
                for p in Path(text).rglob("*")
                if p.suffix.lower() in RASTER_SUFFIXES and p.is_file()
            )
            if not files:
                raise InputError(
                    f"{text}: folder holds no rasters ({', '.join(sorted(RASTER_SUFFIXES))})"
                )
            found.extend(files)
        elif Path(text).exists():
            found.append(Path(text))
        else:
            raise InputError(f"{text}: no such file; check the path")
    kept = (Remote, *SERVICES)
    unique = list(dict.fromkeys(p if isinstance(p, kept) else p.resolve() for p in found))
    if not unique:
        raise InputError("no input rasters given")
    return unique


def _list_file(path: Path) -> list[str]:
    """The inputs a list file names, one per line (``@FILE`` on the command line)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError(f"@{path}: no such list file; check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"@{path}: cannot read this list file ({exc})") from None
    items = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("@"):
            raise InputError(f"@{path}: names another list file ({line}); list the files")
        is_relative = not is_remote(line) and not Path(line).is_absolute()
        items.append(str(path.parent / line) if is_relative else line)
    if not items:
        raise InputError(f"@{path}: the list file names no inputs")
    return items


@dataclass(frozen=True)
class SceneInfo:
    """What geodetect needs to know about one raster file (no pixel data)."""

    path: Path | Remote
    crs: CRS | None
    transform: Affine
    width: int
    height: int
    count: int
    dtype: str
    nodata: float | None
    alpha_band: int | None  # 1-based index of an alpha band, if any
    mask_kind: str  # "none", "nodata", "mask" (internal/per-dataset or alpha)
    # GCP-only rasters: (GCP CRS, target CRS) as WKT; pixels are read through a warp
    warp_crs: tuple[str, str] | None = None
    # Scenes read on another pixel grid than their own (resampled to a target GSD): that
    # grid's affine (six numbers), width and height; pixels are read through a warp.
    warp_grid: tuple[tuple[float, ...], int, int] | None = None
    source_gsd: float | None = None  # the file's own pixel size when resampled
    # The file's own footprint (minx, miny, maxx, maxy, CRS units) when resampled: the
    # resampled window snaps outward to whole target pixels, the data does not.
    source_bounds: tuple[float, float, float, float] | None = None
    # The CRS (WKT) that ``warp_grid`` is in, when it is not the file's own.
    warp_to_crs: str | None = None
    # Resampling of the warp onto ``warp_grid`` ("average" when shrinking, else bilinear).
    warp_resampling: str = "bilinear"
    # The acquisition date (ISO YYYY-MM-DD) the file's metadata states, if any.
    date: str | None = None
    # A remote file's identity as its server states it: [size, ETag, Last-Modified].
    remote_stamp: tuple | None = None

    @property
    def data_bands(self) -> list[int]:
        """1-based bands that carry image data (alpha excluded)."""
        return [b for b in range(1, self.count + 1) if b != self.alpha_band]

    @property
    def grid(self) -> Grid:
        """The file's own pixels on the map."""
        return Grid(self.height, self.width, self.transform, self.crs)

    @property
    def gsd(self) -> float:
        """Pixel size in CRS units (the longer side for non-square pixels)."""
        return self.grid.pixel_size


# Metadata items that state when imagery was taken (default domain; case ignored), and
# the IMD domain's of satellite products. TIFFTAG_DATETIME is not one: it says when the
# file was made.
_DATE_TAGS = (
    "ACQUISITION_DATE",
    "ACQUISITIONDATE",
    "ACQUISITION_DATETIME",
    "ACQUISITIONDATETIME",
    "DATE_ACQUIRED",
    "ACQUIRED",
    "CAPTURE_DATE",
    "IMAGE_DATE",
    "FLIGHT_DATE",
)
_IMD_DATE_TAGS = ("IMAGE_1.FIRSTLINETIME", "MAP_PROJECTED_PRODUCT.EARLIESTACQTIME")
_ISO_DATE = re.compile(r"(\d{4})[-:/]?(\d{2})[-:/]?(\d{2})")


def acquisition_date(ds) -> str | None:
    """The date the imagery was taken, as ``YYYY-MM-DD``, where its metadata says so."""
    found = []
    for domain, keys in ((None, _DATE_TAGS), ("IMD", _IMD_DATE_TAGS)):
        try:
            tags = {k.upper(): v for k, v in ds.tags(ns=domain).items()}
        except Exception:  # noqa: BLE001 - a domain the driver does not have
            continue
        found.extend(tags[k] for k in keys if k in tags)
    for value in found:
        date = parse_date(str(value).strip().strip('"'))
        if date is not None:
            return date
    return None


def parse_date(text: str) -> str | None:
    """``YYYY-MM-DD`` from a date or date-time at the start of ``text`` (``2023-06-01``,
    ``2023:06:01 10:00:00``, ``20230601``), or None when it is not a real date."""
    match = _ISO_DATE.match(text)
    if match is None:
        return None
    try:
        return datetime.date(*(int(g) for g in match.groups())).isoformat()
    except ValueError:
        return None


def _mask_kind(ds: rasterio.DatasetReader) -> str:
    flags = {f for band_flags in ds.mask_flag_enums for f in band_flags}
    if MaskFlags.alpha in flags or MaskFlags.per_dataset in flags:
        return "mask"
    if MaskFlags.nodata in flags:
        return "nodata"
    return "none"


def scene_info(path: str | os.PathLike, *, allow_no_crs: bool = False) -> SceneInfo:
    """Open ``path`` just long enough to describe it.

    Raises:
        RasterError: not a raster GDAL can read, no georeferencing, or no CRS (unless
            ``allow_no_crs``).
        InputError: a remote file's server refuses it or cannot be reached.
    """
    path = path if isinstance(path, Remote) else Path(path)
    remote_stamp = tuple(stamp(path).as_list()) if isinstance(path, Remote) else None
    try:
        with open_raster(path) as ds:
            gcps, gcp_crs = ds.gcps
            if ds.transform.is_identity and gcps and gcp_crs:
                return _gcp_scene_info(path, ds, gcp_crs, ds.crs or gcp_crs)
            if ds.count == 0:
                raise RasterError(
                    f"{path}: has no raster bands (a container of subdatasets?); "
                    "give the image itself"
                )
            info = _describe(path, ds)
            if remote_stamp is not None:
                _warn_if_untiled(path, ds)
    except _GDAL_ERRORS as exc:
        if isinstance(path, Remote):
            raise RasterError(
                f"{path}: cannot be opened over the network ({_first_line(exc)}); check the "
                f"URL and {CREDENTIALS}"
            ) from None
        raise RasterError(f"{path}: not a raster GDAL can read ({_first_line(exc)})") from None
    except UnicodeDecodeError:  # GDAL's message quoted undecodable bytes of the file
        raise RasterError(f"{path}: not a raster GDAL can read (garbled header)") from None
    if info.crs is None and not allow_no_crs:
        raise RasterError(
            f"{path}: has no CRS, so detections cannot be placed on a map; assign one "
            "(e.g. `gdal_edit.py -a_srs EPSG:XXXX`) or pass --allow-no-crs for a layer "
            "in pixel/unknown coordinates"
        )
    if info.transform.is_identity and not allow_no_crs:
        raise RasterError(
            f"{path}: has no geotransform or ground control points; georeference it first"
        )
    return replace(info, remote_stamp=remote_stamp) if remote_stamp is not None else info


# A remote file at least this wide stored in strips (blocks as wide as the file) draws a
# warning: each chip then fetches whole rows of the file.
_STRIP_WARN_PX = 2048


def _warn_if_untiled(path: Remote, ds) -> None:
    """Warn that a remote file stored in strips costs whole rows per chip."""
    block_h, block_w = ds.block_shapes[0]
    if block_w < ds.width or ds.width < _STRIP_WARN_PX:
        return
    log.warning(
        "%s: stored in strips of %d x %d px, not tiled, so each chip reads whole rows of "
        "the file over the network (%.0f MB a row of 512 px chips); convert it to a "
        "Cloud-Optimized GeoTIFF (gdal_translate -of COG) where it is served",
        path,
        block_w,
        block_h,
        ds.width * 512 * ds.count * np.dtype(ds.dtypes[0]).itemsize / 1e6,
    )


def _describe(path: Path, ds, warp_crs: tuple[str, str] | None = None, **warp) -> SceneInfo:
    """SceneInfo from an open dataset (or the warped view of one: give ``date``, since
    a warped view does not carry the file's metadata)."""
    if "date" not in warp:
        warp["date"] = acquisition_date(ds)
    alpha = next((i + 1 for i, ci in enumerate(ds.colorinterp) if ci == ColorInterp.alpha), None)
    return SceneInfo(
        path,
        ds.crs,
        ds.transform,
        ds.width,
        ds.height,
        ds.count,
        ds.dtypes[0],
        ds.nodata,
        alpha,
        _mask_kind(ds),
        warp_crs,
        **warp,
    )


def _gcp_scene_info(path: Path, ds: rasterio.DatasetReader, gcp_crs: CRS, crs: CRS) -> SceneInfo:
    """Describe a GCP-only raster as the north-up grid GDAL warps it to."""
    gcps = ds.gcps[0]
    rows = np.array([g.row for g in gcps])
    cols = np.array([g.col for g in gcps])
    if (
        rows.min() < -1
        or cols.min() < -1
        or rows.max() > ds.height + 1
        or cols.max() > ds.width + 1
    ):
        raise RasterError(
            f"{path}: its ground control points do not lie on the image (pixel rows "
            f"{rows.min():g}-{rows.max():g}, cols {cols.min():g}-{cols.max():g} for a "
            f"{ds.width}x{ds.height} raster), so it cannot be placed on a map; fix the "
            "GCPs or give it a geotransform"
        )
    with WarpedVRT(ds, src_crs=gcp_crs, crs=crs, resampling=Resampling.bilinear) as vrt:
        info = _describe(
            path, vrt, warp_crs=(gcp_crs.to_wkt(), crs.to_wkt()), date=acquisition_date(ds)
        )
    log.info(
        "%s: georeferenced by %d ground control points; read through a warp", path.name, len(gcps)
    )
    return info


def open_scene(info: SceneInfo) -> rasterio.DatasetReader:
    """Open a scene for reading pixels (through a warp for GCP-only and resampled
    rasters)."""
    ds = open_raster(info.path)
    if info.warp_crs is None and info.warp_grid is None:
        return ds
    try:
        return _warped(ds, info.warp_crs, info.warp_grid, info.warp_to_crs, info.warp_resampling)
    except BaseException:
        ds.close()
        raise


def _warped(
    ds, warp_crs, warp_grid, to_crs: str | None = None, resampling: str | None = None
) -> WarpedVRT:
    """The warped view of ``ds``: from its GCPs (``warp_crs``) and/or onto another pixel
    grid (``warp_grid``, in ``to_crs`` or the file's own CRS). ``resampling`` "average"
    averages every source pixel under a target pixel (for shrinking: no aliasing);
    otherwise bilinear. A resampled source without an alpha band gets one, so pixels
    outside it stay masked, never black data."""
    kwargs: dict = {"resampling": Resampling.bilinear}
    if warp_crs is not None:
        src_crs, crs = (CRS.from_wkt(w) for w in warp_crs)
        kwargs.update(src_crs=src_crs, crs=crs)
    if warp_grid is not None:
        numbers, width, height = warp_grid
        kwargs.update(transform=Affine(*numbers[:6]), width=width, height=height)
        if to_crs is not None:
            kwargs["crs"] = CRS.from_wkt(to_crs)
        kwargs.setdefault("crs", ds.crs)
        if resampling == "average":
            kwargs["resampling"] = Resampling.average
        # Every resampled file without an alpha band gets one (nodata or not), so the
        # places it does not cover stay masked.
        if ColorInterp.alpha not in ds.colorinterp:
            kwargs["add_alpha"] = True
    return WarpedVRT(ds, **kwargs)


def _first_line(exc: BaseException) -> str:
    """The most specific message in an exception chain (GDAL's own words, usually)."""
    messages = []
    while exc is not None:
        text = str(exc).strip()
        if text and "See previous exception" not in text:
            messages.append(text.splitlines()[0])
        exc = exc.__cause__ or exc.__context__
    return messages[-1] if messages else "unknown error"


@dataclass(frozen=True)
class Member:
    """A file's place in a mosaic grid: its pixel offset and size on the shared lattice."""

    info: SceneInfo
    row_off: int
    col_off: int

    @property
    def pixel_box(self) -> tuple[int, int, int, int]:
        """The file's pixels on its grid: ``xyxy`` in grid pixels."""
        return window_box(self.row_off, self.col_off, self.info.height, self.info.width)


@dataclass(frozen=True)
class MosaicGrid:
    """A virtual raster over aligned files: one grid (pixel lattice, size, CRS), one band
    layout. Frozen: another band choice is another value (:meth:`with_bands`)."""

    grid: Grid
    members: tuple[Member, ...]
    bands: tuple[int, ...] = ()  # 1-based, in model order

    def __post_init__(self) -> None:
        object.__setattr__(self, "members", tuple(self.members))
        object.__setattr__(self, "bands", tuple(self.bands))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("index", None)  # rebuilt on first use in the process that unpickles it
        return state

    @property
    def crs(self) -> CRS | None:
        return self.grid.crs

    @property
    def transform(self) -> Affine:
        return self.grid.transform

    @property
    def width(self) -> int:
        return self.grid.width

    @property
    def height(self) -> int:
        return self.grid.height

    def with_bands(self, bands: Sequence[int]) -> MosaicGrid:
        return replace(self, bands=tuple(bands))

    @cached_property
    def index(self) -> FileIndex:
        """The files' footprints in grid pixels, searchable in O(log n)."""
        return FileIndex(self.members)

    @property
    def count(self) -> int:
        return len(self.bands)

    @property
    def dtype(self) -> str:
        return self.members[0].info.dtype

    @property
    def gsd(self) -> float:
        return self.members[0].info.gsd

    @property
    def paths(self) -> list[Path]:
        return [m.info.path for m in self.members]

    def data_extent(self) -> tuple[float, float, float, float]:
        """Pixel-edge ``xyxy`` envelope of the files' data on this grid: the whole grid,
        except that resampled files end where their data ends, inside the whole target
        pixels their windows snap out to."""
        x0 = y0 = math.inf
        x1 = y1 = -math.inf
        inverse = ~self.transform
        for m in self.members:
            box = m.pixel_box
            if m.info.source_bounds is not None:
                bx0, by0, bx1, by1 = m.info.source_bounds
                cols, rows = zip(
                    *(inverse @ (x, y) for x in (bx0, bx1) for y in (by0, by1)), strict=True
                )
                box = (
                    max(box[0], min(cols)),
                    max(box[1], min(rows)),
                    min(box[2], max(cols)),
                    min(box[3], max(rows)),
                )
            x0, y0 = min(x0, box[0]), min(y0, box[1])
            x1, y1 = max(x1, box[2]), max(y1, box[3])
        return (x0, y0, x1, y1)

    def members_in(self, row_off: int, col_off: int, height: int, width: int) -> list[Member]:
        """Members whose footprint intersects the window, in input order."""
        return [self.members[i] for i in self.index.query(row_off, col_off, height, width)]


class FileIndex:
    """An STRtree over the footprints of a grid's files, in grid pixels."""

    def __init__(self, members: Sequence[Member]) -> None:
        self.size = len(members)
        self.boxes = np.array([m.pixel_box for m in members], dtype=np.float64).reshape(-1, 4)
        self.tree = shapely.STRtree(shapely.box(*self.boxes.T))
        self.names = np.array([m.info.path.name for m in members], dtype=object)

    def query(self, row_off: float, col_off: float, height: float, width: float) -> np.ndarray:
        """Indices (ascending) of the files overlapping the window (not merely touching)."""
        window = window_box(row_off, col_off, height, width)
        hits = np.sort(self.tree.query(shapely.box(*window)))
        return hits[boxes_overlap(self.boxes[hits], window)]

    def first_at(self, cols: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """For each point (grid pixels), the index of the first file holding it, -1 if none."""
        cols = np.asarray(cols, dtype=np.float64)
        rows = np.asarray(rows, dtype=np.float64)
        first = np.full(len(cols), -1, dtype=np.int64)
        if not len(cols) or not self.size:
            return first
        points = np.column_stack([cols, rows])
        # The files near the points first (one query of their bounds): a chip's cells
        # or boxes meet a few files, each tested against all points at once.
        near = np.sort(self.tree.query(shapely.box(cols.min(), rows.min(), cols.max(), rows.max())))
        if len(near) <= FIRST_AT_NEAR:
            for member in near:  # in file order: the first file holding a point wins
                inside = points_in_boxes(points, self.boxes[member], edges="half-open")
                first[(first < 0) & inside] = member
            return first
        point, member = self.tree.query(shapely.points(cols, rows), predicate="intersects")
        inside = points_in_boxes(points[point], self.boxes[member], edges="half-open")
        point, member = point[inside], member[inside]
        best = np.full(len(cols), np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(best, point, member)
        return np.where(best == np.iinfo(np.int64).max, -1, best)


def build_mosaics(infos: Sequence[SceneInfo]) -> list[MosaicGrid]:
    """Group scenes into mosaic grids: same CRS, pixel size, rotation, lattice, data
    bands and dtype (an alpha band that only some files carry does not split a mosaic).

    Files that cannot share a lattice with others (another CRS or resolution, a shifted
    lattice) get a grid of their own; their overlaps are still merged later in map
    coordinates.
    """
    groups: list[list[tuple[SceneInfo, int, int]]] = []
    for info in infos:
        for group in groups:
            ref = group[0][0]
            if info.crs != ref.crs or info.data_bands != ref.data_bands or info.dtype != ref.dtype:
                continue
            offset = info.grid.offset_on(ref.transform)
            if offset is not None:
                group.append((info, *offset))
                break
        else:
            groups.append([(info, 0, 0)])
    grids = []
    for group in groups:
        min_row = min(r for _, r, _ in group)
        min_col = min(c for _, _, c in group)
        ref = group[0][0]
        members = [Member(i, r - min_row, c - min_col) for i, r, c in group]
        height = max(m.row_off + m.info.height for m in members)
        width = max(m.col_off + m.info.width for m in members)
        grid = ref.grid.window(min_row, min_col, height, width)
        grids.append(MosaicGrid(grid, tuple(members), bands=tuple(ref.data_bands)))
    return grids


def open_mosaics(
    inputs: Iterable[str | os.PathLike | TileService],
    *,
    allow_no_crs: bool = False,
    gsd: float | None = None,
) -> list[MosaicGrid]:
    """Expand inputs and group them into mosaic grids (see :func:`build_mosaics`); tile
    services are read at ``gsd`` metres."""
    files = resolve_services(expand_inputs(inputs), gsd)
    return build_mosaics(describe_all(files, allow_no_crs=allow_no_crs))


def describe_all(paths: Sequence[Path | Remote], *, allow_no_crs: bool = False) -> list[SceneInfo]:
    """:func:`scene_info` of every file, in order. Local files one at a time (threads
    bought nothing on local disks); remote ones by :data:`REMOTE_THREADS` threads, since
    each waits on its server, all finished before anything forks reader processes."""
    describe = partial(scene_info, allow_no_crs=allow_no_crs)
    remote = [p for p in paths if isinstance(p, Remote)]
    if len(remote) < 2:
        return [describe(p) for p in paths]
    with ThreadPoolExecutor(REMOTE_THREADS) as pool:
        described = dict(zip(remote, pool.map(describe, remote), strict=True))
    return [described[p] if isinstance(p, Remote) else describe(p) for p in paths]


def resample_scene(info: SceneInfo, lattice: Affine, crs: CRS | None = None) -> SceneInfo:
    """``info`` seen on another pixel lattice, optionally in another CRS: the smallest
    window of ``lattice`` (a north-up affine whose pixel size is the target GSD and whose
    origin anchors the lattice) that covers the file, read through a warp.

    Files resampled onto one lattice line up as a mosaic again (see
    :func:`build_mosaics`), so objects on their seams are still read whole.
    """
    # The file's outline (corners and points along its edges), in the target CRS.
    steps = np.linspace(0.0, 1.0, 21)
    edge = np.concatenate([steps, np.ones(21), steps[::-1], np.zeros(21)])
    other = np.concatenate([np.zeros(21), steps, np.ones(21), steps[::-1]])
    cols_px, rows_px = edge * info.width, other * info.height
    xs, ys = info.transform @ (cols_px, rows_px)
    reproject = crs is not None and info.crs is not None and crs != info.crs
    try:
        if reproject:
            xs, ys = (np.asarray(v) for v in transform(info.crs, crs, xs, ys))
        bounds = (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))
        window = covering_window(lattice, xs, ys)
        warp_grid = (tuple(window.transform)[:6], window.width, window.height)
        # Shrinking (target pixels coarser than the file's): average, else bilinear. The
        # file's pixel in target units: its outline's extent over its pixels.
        source_size = info.gsd
        if reproject:
            cols, rows = ~lattice @ (xs, ys)
            span = max(np.ptp(cols), np.ptp(rows)) * math.hypot(lattice.a, lattice.d)
            source_size = span / max(info.width, info.height)
        target_size = math.hypot(lattice.a, lattice.d)
        resampling = "average" if target_size > 1.01 * source_size else "bilinear"
        to_crs = crs.to_wkt() if reproject else None
        with (
            open_raster(info.path) as ds,
            _warped(ds, info.warp_crs, warp_grid, to_crs, resampling) as vrt,
        ):
            return _describe(
                info.path,
                vrt,
                info.warp_crs,
                warp_grid=warp_grid,
                source_gsd=info.gsd,
                source_bounds=tuple(bounds),
                warp_to_crs=to_crs,
                warp_resampling=resampling,
                date=info.date,
                remote_stamp=info.remote_stamp,
            )
    except _GDAL_ERRORS as exc:
        raise RasterError(
            f"{info.path}: cannot be read on a {math.hypot(lattice.a, lattice.d):g}-unit grid"
            f"{' in ' + crs.to_string() if reproject else ''} ({_first_line(exc)})"
        ) from None


def resample_grid(grid: MosaicGrid, pixel_size: float, crs: CRS | None = None) -> list[MosaicGrid]:
    """The files of ``grid`` on a north-up lattice of ``pixel_size`` (CRS units) that
    shares the grid's origin, or in ``crs`` on the lattice through that CRS's origin;
    band selection is kept. The files share that lattice and one band layout, so one
    grid comes back (the list form follows ``build_mosaics``)."""
    if crs is None or crs == grid.crs:
        crs, origin = None, grid.transform
        lattice = Affine(pixel_size, 0.0, origin.c, 0.0, -pixel_size, origin.f)
    else:
        lattice = Affine(pixel_size, 0.0, 0.0, 0.0, -pixel_size, 0.0)
    infos = [resample_scene(m.info, lattice, crs) for m in grid.members]
    return [g.with_bands(grid.bands) for g in build_mosaics(infos)]


def grid_gsd_metres(grid: MosaicGrid) -> float | None:
    """The grid's pixel size in metres (None without a CRS in lengths or angles)."""
    return gsd_metres(grid.crs, grid.transform, grid.width, grid.height)


def resample_to_gsd(
    grids: Sequence[MosaicGrid], gsd: float, *, tolerance: float, max_factor: float = 4.0
) -> list[MosaicGrid]:
    """Grids whose pixels are more than ``tolerance`` (relative) away from ``gsd`` metres,
    read at ``gsd`` instead, through a warp on a lattice sharing each grid's origin; the
    others as they are. Grids in degrees are read in their UTM zone (see
    :func:`~geodetect.io.units.local_utm`) at ``gsd``, whatever their pixel size, so
    pixels are square on the ground; those spanning too much of the globe for one zone
    are left in degrees with a warning. Grids more than ``max_factor`` finer or coarser
    are left as they are (10 m satellite pixels read at 0.3 m would be a thousand times
    the pixels, and objects of a few pixels do not come back by resampling)."""
    out = []
    for grid in grids:
        size_m = grid_gsd_metres(grid)
        degrees = grid.crs is not None and grid.crs.is_geographic
        if size_m is None or (not degrees and abs(size_m / gsd - 1) <= tolerance):
            out.append(grid)
            continue
        name = grid.paths[0].name + (
            f" and {len(grid.members) - 1} more" if len(grid.members) > 1 else ""
        )
        if not 1 / max_factor <= size_m / gsd <= max_factor:
            log.warning(
                "%s has %.3g m pixels, more than %gx the model's %.3g m either way; it is "
                "read as it is (resample it yourself, or use a model trained nearer its "
                "resolution)",
                name,
                size_m,
                max_factor,
                gsd,
            )
            out.append(grid)
            continue
        bounds = array_bounds(grid.height, grid.width, grid.transform)
        utm = local_utm(grid.crs, bounds) if degrees else None
        if degrees and utm is None:
            log.warning(
                "%s is in degrees and spans too much of the globe for one UTM zone, so it "
                "cannot be read in %.3g m pixels; reproject it to a projected CRS for "
                "better results",
                name,
                gsd,
            )
            out.append(grid)
            continue
        if utm is not None:
            log.info("%s: in degrees, read in %s at %.3g m", name, utm.name, gsd)
            out.extend(resample_grid(grid, gsd, crs=raster_crs(utm)))
            continue
        log.info("%s: %.3g m pixels, read at %.3g m", name, size_m, gsd)
        out.extend(resample_grid(grid, gsd * grid.gsd / size_m))
    return out


def default_max_open() -> int:
    """How many datasets one reader keeps open: 64, or a quarter of this process's
    open-file limit when that is lower (a worker also holds pipes, libraries and
    sockets), at least 4."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return 64
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return 64
    return max(4, min(64, soft // 4))


class GridReader:
    """Windowed reads from a mosaic grid; pads outside the files and reports validity.

    Each process opens its own dataset handles on first use and keeps at most
    ``max_open`` of them (least recently used closed first), so a mosaic of thousands of
    files runs under a laptop's open-file limit. Handles are dropped when the reader is
    pickled into another process.
    """

    def __init__(self, grid: MosaicGrid, *, max_open: int | None = None) -> None:
        self.grid = grid
        self.max_open = max_open or default_max_open()
        self._handles: OrderedDict[Path, rasterio.DatasetReader] = OrderedDict()

    def __getstate__(self) -> dict:
        return {"grid": self.grid, "max_open": self.max_open, "_handles": OrderedDict()}

    def close(self) -> None:
        while self._handles:
            _close(self._handles.popitem(last=False)[1])

    def _open(self, info: SceneInfo) -> rasterio.DatasetReader:
        handle = self._handles.get(info.path)
        if handle is not None:
            self._handles.move_to_end(info.path)
            return handle
        while len(self._handles) >= self.max_open:
            _close(self._handles.popitem(last=False)[1])
        handle = self._handles[info.path] = open_scene(info)
        return handle

    def read(
        self, row_off: int, col_off: int, height: int, width: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Read a window of the grid.

        Returns:
            data: array [C, height, width] in the files' dtype, bands in ``grid.bands``
                order, zero where no file covers the window or data is masked.
            valid: bool array [height, width], True where a pixel holds real data.

        Raises:
            RasterError: a file cannot be read in this window (damaged data).
        """
        grid = self.grid
        data = np.zeros((grid.count, height, width), dtype=grid.dtype)
        valid = np.zeros((height, width), dtype=bool)
        for member in grid.members_in(row_off, col_off, height, width):
            info = member.info
            r0 = max(row_off, member.row_off)
            c0 = max(col_off, member.col_off)
            r1 = min(row_off + height, member.row_off + info.height)
            c1 = min(col_off + width, member.col_off + info.width)
            window = Window(c0 - member.col_off, r0 - member.row_off, c1 - c0, r1 - r0)
            dst = (slice(r0 - row_off, r1 - row_off), slice(c0 - col_off, c1 - col_off))
            try:
                ds = self._open(info)
                block = ds.read(grid.bands, window=window)
                block_valid = self._valid(ds, info, block, window)
            except (*_GDAL_ERRORS, OSError) as exc:
                _raise_if_out_of_files(exc, info.path)
                if isinstance(info.path, Remote):
                    raise RunError(
                        f"{info.path}: reading window (col {window.col_off}, row "
                        f"{window.row_off}, {window.width}x{window.height}) over the network "
                        f"failed: {_first_line(exc)}; rerun the same command to continue "
                        "(finished blocks are kept)"
                    ) from None
                raise RasterError(
                    f"{info.path}: cannot read window (col {window.col_off}, row "
                    f"{window.row_off}, {window.width}x{window.height}): {_first_line(exc)}; "
                    "the file may be damaged (re-copy it, or pass --skip-bad-chips)"
                ) from None
            block[:, ~block_valid] = 0
            data[(slice(None), *dst)] = np.where(block_valid, block, data[(slice(None), *dst)])
            valid[dst] |= block_valid
        return data, valid

    @staticmethod
    def _valid(ds, info: SceneInfo, block: np.ndarray, window: Window) -> np.ndarray:
        if info.mask_kind == "mask":
            return ds.read_masks(1, window=window) > 0
        finite = np.isfinite(block).all(axis=0) if block.dtype.kind == "f" else True
        if info.mask_kind == "nodata" and info.nodata is not None:
            nodata = info.nodata
            is_nodata = np.isnan(block) if math.isnan(nodata) else block == nodata
            return ~is_nodata.all(axis=0) & finite
        return np.ones(block.shape[1:], dtype=bool) & finite


def _raise_if_out_of_files(exc: BaseException, path: Path) -> None:
    """A read that failed because the process may open no more files is not a damaged
    file: say so, with the limit and how to raise it."""
    text = _first_line(exc)
    if getattr(exc, "errno", None) in (errno.EMFILE, errno.ENFILE) or "Too many open files" in text:
        try:
            import resource

            limit = f" (the limit is {resource.getrlimit(resource.RLIMIT_NOFILE)[0]})"
        except (ImportError, OSError, ValueError):
            limit = ""
        raise RunError(
            f"{path}: cannot be opened: this process has too many open files{limit}; "
            "raise the limit (e.g. `ulimit -n 4096`) and rerun to continue"
        ) from None


def _close(handle) -> None:
    handle.close()
    if isinstance(handle, WarpedVRT):
        handle.src_dataset.close()


def _overview_read(
    grid: MosaicGrid, member: Member, max_side: int
) -> tuple[np.ndarray, np.ndarray]:
    """A decimated read of one member (GDAL uses overviews when present): data, valid."""
    info = member.info
    scale = max(1.0, max(info.width, info.height) / max_side)
    shape = (max(1, int(info.height / scale)), max(1, int(info.width / scale)))
    try:
        with open_scene(info) as ds:
            data = ds.read(grid.bands, out_shape=(grid.count, *shape))
            if info.mask_kind == "mask":
                valid = ds.read_masks(1, out_shape=shape) > 0
            else:
                valid = GridReader._valid(ds, info, data, None)
    except (*_GDAL_ERRORS, OSError) as exc:
        raise RasterError(
            f"{info.path}: cannot read the whole file at reduced resolution (for its band "
            f"statistics): {_first_line(exc)}; the file may be damaged, re-copy it"
        ) from None
    return data, valid


def _sample_members(grid: MosaicGrid, limit: int) -> list[Member]:
    step = max(1, len(grid.members) // limit)
    return grid.members[::step][:limit]


def grid_has_data(grid: MosaicGrid, *, max_side: int = 512, limit: int = 256) -> bool:
    """Whether any (sampled) file of the grid holds a valid pixel, from decimated reads."""
    return any(_overview_read(grid, m, max_side)[1].any() for m in _sample_members(grid, limit))


def grid_band_stats(
    grid: MosaicGrid, *, max_side: int = 1024, limit: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and std of a mosaic grid's valid pixels, from decimated reads of at
    most ``limit`` files, so memory and time stay bounded whatever the mosaic size."""
    sums = np.zeros(grid.count)
    sq = np.zeros(grid.count)
    n = 0
    for member in _sample_members(grid, limit):
        data, valid = _overview_read(grid, member, max_side)
        pixels = data[:, valid].astype(np.float64)
        sums += pixels.sum(axis=1)
        sq += (pixels**2).sum(axis=1)
        n += pixels.shape[1]
    if n == 0:
        return np.zeros(grid.count), np.ones(grid.count)
    mean = sums / n
    std = np.sqrt(np.maximum(sq / n - mean**2, 0.0))
    return mean, np.where(std > 0, std, 1.0)


def read_overview(
    grid: MosaicGrid, *, max_side: int = 1500
) -> tuple[np.ndarray, np.ndarray, Affine]:
    """A downsampled picture of a whole mosaic grid, for maps and quick looks.

    Returns:
        data [C, h, w] (grid bands, source dtype), valid [h, w], and the affine transform
        of the downsampled array (so map geometries can be drawn over it).
    """
    scale = max(1.0, max(grid.width, grid.height) / max_side)
    height, width = max(1, round(grid.height / scale)), max(1, round(grid.width / scale))
    data = np.zeros((grid.count, height, width), dtype=grid.dtype)
    valid = np.zeros((height, width), dtype=bool)
    for member in grid.members:
        info = member.info
        r0, c0 = round(member.row_off / scale), round(member.col_off / scale)
        r1 = min(height, round((member.row_off + info.height) / scale))
        c1 = min(width, round((member.col_off + info.width) / scale))
        if r1 <= r0 or c1 <= c0:
            continue
        shape = (r1 - r0, c1 - c0)
        with open_scene(info) as ds:
            block = ds.read(grid.bands, out_shape=(grid.count, *shape))
            if info.mask_kind == "mask":
                ok = ds.read_masks(1, out_shape=shape) > 0
            else:
                ok = GridReader._valid(ds, info, block, None)
        data[:, r0:r1, c0:c1] = np.where(ok, block, data[:, r0:r1, c0:c1])
        valid[r0:r1, c0:c1] |= ok
    transform = grid.transform @ Affine.scale(grid.width / width, grid.height / height)
    return data, valid, transform
