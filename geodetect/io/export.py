"""Writing the detection layer: format by extension, atomic temp-file-then-rename writes,
RFC 7946 GeoJSON, and areas in square metres whatever the CRS."""

from __future__ import annotations

import logging
import os
import sys
import uuid
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import shapely
from pyproj import CRS, Geod

from geodetect.errors import OutputError

log = logging.getLogger(__name__)

# extension -> OGR driver ("parquet" is written by geopandas as GeoParquet)
FORMATS = {
    ".gpkg": "GPKG",
    ".geojson": "GeoJSON",
    ".shp": "ESRI Shapefile",
    ".parquet": "parquet",
    ".fgb": "FlatGeobuf",
}
_WRITE_ERRORS = (OSError, pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError)
_SHAPEFILE_SIDECARS = (".shp", ".shx", ".dbf", ".prj", ".cpg")


def output_format(out: str | os.PathLike) -> str:
    """The driver for an output path, or OutputError naming the supported extensions."""
    if str(out) == "-":
        return "GeoJSON"
    suffix = Path(out).suffix.lower()
    if suffix not in FORMATS:
        raise OutputError(
            f"{out}: unknown output format {suffix or '(no extension)'!r}; use one of "
            f"{', '.join(FORMATS)} (or '-' for GeoJSON on stdout)"
        )
    return FORMATS[suffix]


def check_output(out: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Fail early, before any work, if ``out`` cannot be written."""
    output_format(out)
    if str(out) == "-":
        return
    path = Path(out)
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: already exists; pass --overwrite to replace it")
    folder = path.parent if str(path.parent) else Path(".")
    # The nearest ancestor that exists: a file there blocks every folder below it, so
    # "create it first" would be advice that cannot be followed.
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        what = "a file, not a folder" if existing.is_file() else "not a folder"
        raise OutputError(
            f"{path}: {existing} is {what}, so nothing can be written under it; "
            "choose another --out"
        )
    if not folder.is_dir():
        raise OutputError(f"{path}: folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"{path}: folder {folder} is not writable; choose another --out")


def area_m2(geometries: np.ndarray | gpd.GeoSeries, crs: CRS | str | None) -> np.ndarray:
    """Areas in square metres: geodesic on the ellipsoid for geographic CRSs, planar
    areas scaled by the linear unit for projected ones, NaN when there is no CRS."""
    geoms = np.asarray(geometries, dtype=object)
    if crs is None:
        return np.full(len(geoms), np.nan)
    crs = CRS.from_user_input(crs)
    if crs.is_geographic:
        geod = crs.get_geod() or Geod(ellps="WGS84")
        return np.array([abs(geod.geometry_area_perimeter(g)[0]) for g in geoms], dtype=float)
    factor = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
    return shapely.area(geoms) * factor**2


def _rfc7946(gdf: gpd.GeoDataFrame, out: str | os.PathLike) -> gpd.GeoDataFrame:
    if gdf.crs is None:
        where = "stdout" if str(out) == "-" else str(out)
        error = OutputError(
            f"{where}: GeoJSON output needs a CRS to convert to WGS84 lon/lat, and these "
            "detections have none; write .gpkg instead"
        )
        error.transient = False  # the same command can never write it
        raise error
    wgs84 = gdf.to_crs("EPSG:4326")
    wgs84["geometry"] = shapely.orient_polygons(wgs84.geometry.values, exterior_cw=False)
    return wgs84


def write_layer(
    gdf: gpd.GeoDataFrame,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    layer: str = "detections",
) -> Path | None:
    """Write ``gdf`` to ``out`` in the format its extension names.

    The file appears atomically: data goes to a hidden temp file in the same folder,
    which is renamed over ``out`` only once complete. ``out == "-"`` writes RFC 7946
    GeoJSON to stdout. Returns the written path (None for stdout).
    """
    driver = output_format(out)
    if str(out) == "-":
        text = _rfc7946(gdf, out).to_json(drop_id=True, to_wgs84=False)
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        return None
    check_output(out, overwrite=overwrite)
    path = Path(out)
    if driver == "GeoJSON":
        gdf = _rfc7946(gdf, out)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        if driver == "parquet":
            gdf.to_parquet(tmp, index=False)
        else:
            options = {"RFC7946": "YES"} if driver == "GeoJSON" else {}
            pyogrio.write_dataframe(
                gdf,
                tmp,
                driver=driver,
                layer=None if driver == "GeoJSON" else layer,
                geometry_type="Polygon",
                layer_options=options or None,
            )
        for src, dst in _renames(tmp, path, driver):
            os.replace(src, dst)
    except BaseException as exc:
        _cleanup(tmp, driver)
        if isinstance(exc, _WRITE_ERRORS):
            raise OutputError(f"{path}: could not write ({exc}); nothing was written") from None
        raise
    return path


def _renames(tmp: Path, path: Path, driver: str) -> list[tuple[Path, Path]]:
    if driver != "ESRI Shapefile":
        return [(tmp, path)]
    pairs = [(tmp.with_suffix(s), path.with_suffix(s)) for s in _SHAPEFILE_SIDECARS]
    # .shp last, so a reader never sees a .shp without its .dbf.
    return sorted((p for p in pairs if p[0].exists()), key=lambda p: p[0].suffix == ".shp")


def _cleanup(tmp: Path, driver: str) -> None:
    suffixes = _SHAPEFILE_SIDECARS if driver == "ESRI Shapefile" else (tmp.suffix,)
    for suffix in suffixes:
        tmp.with_suffix(suffix).unlink(missing_ok=True)
