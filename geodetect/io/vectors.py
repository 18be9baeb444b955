"""Vector layers in: reading any OGR format or GeoParquet, repairing polygons, reprojecting.

Every reader error is a :class:`~geodetect.errors.InputError` (the file is missing or is not
a vector file) or a :class:`~geodetect.errors.LabelError` (the file is a vector file but the
layer cannot be used as it is: no CRS, no geometries, ambiguous layer). A layer read here
remembers where it came from in ``gdf.attrs["source"]`` so later messages can name the file.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyogrio
import shapely

from geodetect.errors import InputError, LabelError
from geodetect.io.crs import crs_label, parse_crs

log = logging.getLogger(__name__)

PARQUET_SUFFIXES = {".parquet", ".geoparquet"}
# Layers geodetect writes beside the main one in a GeoPackage; a file holding one main
# layer and these is read as its main layer.
SIDE_LAYERS = ("coverage",)
_FORMATS_HINT = "use a GeoPackage, GeoJSON, Shapefile, FlatGeobuf or GeoParquet file"
_POLYGON = int(shapely.GeometryType.POLYGON)
_MULTIPOLYGON = int(shapely.GeometryType.MULTIPOLYGON)
_COLLECTION = int(shapely.GeometryType.GEOMETRYCOLLECTION)

Bounds = tuple[float, float, float, float]
# What a damaged file can raise from the readers' insides: Arrow (ValueError/OSError),
# bad CRS metadata (pyproj's CRSError is a RuntimeError), bad WKB (GEOSException)...
_DAMAGED_FILE_ERRORS = (
    OSError,
    ValueError,
    RuntimeError,
    KeyError,
    TypeError,
    IndexError,
    shapely.errors.ShapelyError,
)


def layer_name(gdf: gpd.GeoDataFrame, default: str = "layer") -> str:
    """The file a layer came from (``attrs["source"]``), or ``default`` for one made in memory."""
    return str(gdf.attrs.get("source", default))


def read_layer(
    path: str | os.PathLike[str],
    *,
    layer: str | int | None = None,
    bbox: Bounds | None = None,
    assume_crs: Any = None,
) -> gpd.GeoDataFrame:
    """Read one vector layer into a GeoDataFrame that is sure to carry a CRS.

    Args:
        path: any vector dataset GDAL/OGR opens (GeoPackage, GeoJSON, Shapefile, FlatGeobuf,
            a folder of shapefiles, ``/vsizip/...``), or GeoParquet (``.parquet`` /
            ``.geoparquet``, read with :func:`geopandas.read_parquet`).
        layer: layer name or 0-based index. Without it a dataset with exactly one layer of
            geometries reads that one; several such layers are an error that lists them,
            because picking one silently could score the wrong labels.
        bbox: ``(xmin, ymin, xmax, ymax)`` in the layer's own CRS; only features that
            intersect it are read.
        assume_crs: CRS to give a layer that carries none (logged as a warning). Without it
            such a layer is an error: coordinates are never guessed.

    Returns:
        The features, with their attribute columns and active geometry column; rows keep
        the file's order. ``attrs["source"]`` holds ``path`` as text. Zero features is not
        an error here (an empty detection layer is a valid result).

    Raises:
        InputError: ``path`` does not exist, cannot be read, or is not a vector file.
        LabelError: the layer has no geometry column, no CRS (and no ``assume_crs``), or
            the layer to read is missing or ambiguous.
    """
    source = os.fspath(path)
    virtual = source.startswith("/vsi") or "://" in source
    if not virtual:
        local = Path(source)
        if not local.exists():
            raise InputError(f"{source}: no such file; check the path")
        if local.is_file() and not os.access(local, os.R_OK):
            raise InputError(f"{source}: permission denied; make the file readable")
    if Path(source).suffix.lower() in PARQUET_SUFFIXES:
        gdf = _read_parquet(source, bbox)
    else:
        gdf = _read_ogr(source, layer, bbox)

    if gdf.crs is None:
        if assume_crs is None:
            raise LabelError(
                f"{source}: layer has no CRS; assign the right one in your GIS "
                "(e.g. `ogr2ogr -a_srs EPSG:XXXX out.gpkg in.gpkg`) or pass the CRS to assume"
            )
        log.warning("%s: layer has no CRS; assuming %s as asked", source, crs_label(assume_crs))
        gdf = gdf.set_crs(parse_crs(assume_crs))
    gdf.attrs["source"] = source
    log.debug("%s: read %d features in %s", source, len(gdf), crs_label(gdf.crs))
    return gdf


def _read_ogr(source: str, layer: str | int | None, bbox: Bounds | None) -> gpd.GeoDataFrame:
    try:
        layers = pyogrio.list_layers(source)
    except pyogrio.errors.DataSourceError as exc:
        log.debug("%s: GDAL says: %s", source, exc)
        raise InputError(f"{source}: not a vector file GDAL can read; {_FORMATS_HINT}") from None
    except _DAMAGED_FILE_ERRORS as exc:  # e.g. a layer name that is not valid UTF-8
        log.debug("%s: GDAL says: %s", source, exc)
        raise InputError(
            f"{source}: damaged vector file that cannot be read; re-export it from your GIS"
        ) from None
    names = [str(name) for name, _ in layers]
    spatial = [str(name) for name, geom_type in layers if geom_type is not None]

    main = [name for name in spatial if name not in SIDE_LAYERS]
    if layer is None:
        if len(spatial) == 1:
            chosen: str = spatial[0]
        elif len(main) == 1:  # geodetect's output: the detections beside their coverage
            chosen = main[0]
        elif not spatial:
            found = f" (only tables: {', '.join(names)})" if names else ""
            raise LabelError(
                f"{source}: holds no layer with geometries{found}; give a layer of polygons"
            )
        else:
            raise LabelError(
                f"{source}: holds {len(spatial)} layers with geometries "
                f"({', '.join(spatial)}); name the one to read"
            )
    elif isinstance(layer, int):
        if not 0 <= layer < len(names):
            raise LabelError(
                f"{source}: has no layer number {layer} (layers: {', '.join(names)}); "
                "give a 0-based index or a layer name"
            )
        chosen = names[layer]
    else:
        if layer not in names:
            raise LabelError(
                f"{source}: has no layer {layer!r} (layers: {', '.join(names)}); name one of these"
            )
        chosen = layer
    if chosen not in spatial:
        raise LabelError(f"{source}: layer {chosen!r} has no geometries; give a layer of polygons")

    try:
        gdf = pyogrio.read_dataframe(source, layer=chosen, bbox=bbox)
    except pyogrio.errors.DataSourceError as exc:
        log.debug("%s: GDAL says: %s", source, exc)
        raise InputError(f"{source}: cannot be read as a vector file; {_FORMATS_HINT}") from None
    except (
        pyogrio.errors.DataLayerError,
        pyogrio.errors.FieldError,
        pyogrio.errors.GeometryError,
        *_DAMAGED_FILE_ERRORS,
    ) as exc:
        log.debug("%s: GDAL says: %s", source, exc)
        raise InputError(
            f"{source}: layer {chosen!r} is damaged and cannot be read; re-export it from your GIS"
        ) from None
    if not isinstance(gdf, gpd.GeoDataFrame):
        raise LabelError(f"{source}: layer {chosen!r} has no geometries; give a layer of polygons")
    return gdf


def _read_parquet(source: str, bbox: Bounds | None) -> gpd.GeoDataFrame:
    import pyarrow.parquet as pq  # only Parquet input pays for this import

    try:
        schema = pq.read_schema(source)
    except (OSError, ValueError) as exc:  # ArrowInvalid is a ValueError
        log.debug("%s: Arrow says: %s", source, exc)
        raise InputError(f"{source}: not a Parquet file; {_FORMATS_HINT}") from None
    if not schema.metadata or b"geo" not in schema.metadata:
        raise LabelError(
            f"{source}: Parquet file without GeoParquet geometry metadata; write it with "
            "GeoDataFrame.to_parquet or `ogr2ogr -f Parquet`"
        )
    try:
        gdf = gpd.read_parquet(source)
    except _DAMAGED_FILE_ERRORS as exc:
        log.debug("%s: geopandas says: %s", source, exc)
        raise InputError(
            f"{source}: damaged GeoParquet file that cannot be read; re-export it"
        ) from None
    if bbox is not None:
        gdf = gdf[gdf.geometry.intersects(shapely.box(*bbox))]
    return gdf


@dataclass(frozen=True)
class RepairReport:
    """What :func:`repair_geometries` changed.

    Attributes:
        repaired: invalid geometries (self-intersections, bad rings...) made valid and kept.
        dropped: features removed: null or empty geometries, and geometries with no
            polygonal part (points, lines, rings collapsed by the repair).
    """

    repaired: int = 0
    dropped: int = 0

    def __str__(self) -> str:
        return f"{self.repaired} repaired, {self.dropped} dropped"


def repair_geometries(gdf: gpd.GeoDataFrame) -> tuple[gpd.GeoDataFrame, RepairReport]:
    """Make every geometry a valid, non-empty Polygon or MultiPolygon.

    Invalid geometries go through :func:`shapely.make_valid` (a bow-tie becomes two
    triangles); of what comes back only the polygonal parts are kept (a repair that
    returns a GeometryCollection keeps its polygons as one (Multi)Polygon). Features
    left with nothing polygonal are dropped. All work is vectorised over the layer.

    Returns:
        ``(repaired, report)``: a new GeoDataFrame holding the kept rows (original index
        and attributes, same CRS and ``attrs``), and the counts in a :class:`RepairReport`.
    """
    geoms = np.asarray(gdf.geometry.to_numpy(), dtype=object)
    fixed = geoms.copy()
    invalid = ~shapely.is_missing(geoms) & ~shapely.is_valid(geoms)
    if invalid.any():
        fixed[invalid] = shapely.make_valid(geoms[invalid])
    collections = shapely.get_type_id(fixed) == _COLLECTION
    if collections.any():
        # Polygons of a collection may overlap, which a MultiPolygon must not: fix again.
        fixed[collections] = shapely.make_valid(_polygonal_parts(fixed[collections]))
    kind = shapely.get_type_id(fixed)
    keep = ((kind == _POLYGON) | (kind == _MULTIPOLYGON)) & ~shapely.is_empty(fixed)

    out = gdf.loc[keep].copy()
    out[out.geometry.name] = gpd.GeoSeries(fixed[keep], index=out.index, crs=gdf.crs)
    out.attrs = dict(gdf.attrs)
    report = RepairReport(repaired=int((invalid & keep).sum()), dropped=int((~keep).sum()))
    # Callers decide how loudly to report; the counts are in the returned report.
    log.debug("%s: geometries: %s", layer_name(gdf), report)
    return out, report


def _polygonal_parts(collections: np.ndarray) -> np.ndarray:
    """For each GeometryCollection, its polygons as one Polygon/MultiPolygon, or None."""
    parts, owner = shapely.get_parts(collections, return_index=True)
    # make_valid may nest a MultiPolygon inside the collection; one more level flattens it.
    parts, inner_owner = shapely.get_parts(parts, return_index=True)
    owner = owner[inner_owner]
    polygon = (shapely.get_type_id(parts) == _POLYGON) & ~shapely.is_empty(parts)
    result = np.full(len(collections), None, dtype=object)
    if polygon.any():
        shapely.multipolygons(parts[polygon], indices=owner[polygon], out=result)
        single = shapely.get_num_geometries(result) == 1
        result[single] = shapely.get_geometry(result[single], 0)
    return result


def to_crs_checked(gdf: gpd.GeoDataFrame, crs: Any, *, assume_crs: Any = None) -> gpd.GeoDataFrame:
    """Reproject ``gdf`` to ``crs``; a layer without a CRS is an error, never a guess.

    Args:
        gdf: the layer.
        crs: target CRS, anything :class:`pyproj.CRS` accepts (``"EPSG:32633"``, WKT, a CRS).
        assume_crs: CRS to give ``gdf`` first if it carries none (logged as a warning).

    Returns:
        ``gdf`` itself when it is already in ``crs``, else a reprojected copy.

    Raises:
        InputError: ``crs`` or ``assume_crs`` is not a CRS pyproj knows.
        LabelError: ``gdf`` has no CRS and no ``assume_crs`` was given, or its coordinates
            do not survive the reprojection (usually a wrongly declared CRS).
    """
    name = layer_name(gdf)
    target = parse_crs(crs)
    if gdf.crs is None:
        if assume_crs is None:
            raise LabelError(
                f"{name}: layer has no CRS; assign the right one in your GIS "
                "(e.g. `ogr2ogr -a_srs EPSG:XXXX out.gpkg in.gpkg`) or pass the CRS to assume"
            )
        log.warning("%s: layer has no CRS; assuming %s as asked", name, crs_label(assume_crs))
        gdf = gdf.set_crs(parse_crs(assume_crs))
    if gdf.crs.equals(target):
        return gdf
    source_crs = gdf.crs
    out = gdf.to_crs(target)
    out.attrs = dict(gdf.attrs)
    geoms = out.geometry.to_numpy()
    present = ~shapely.is_missing(geoms) & ~shapely.is_empty(geoms)
    if present.any() and not np.isfinite(shapely.bounds(geoms[present])).all():
        raise LabelError(
            f"{name}: coordinates do not fit {crs_label(source_crs)} (reprojecting to "
            f"{crs_label(target)} fails); check the CRS the layer declares"
        )
    log.debug("%s: reprojected from %s to %s", name, crs_label(source_crs), crs_label(target))
    return out
