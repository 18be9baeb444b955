"""Writing the detection layer: format by extension, atomic temp-file-then-rename writes,
RFC 7946 GeoJSON, and areas in square metres whatever the CRS."""

from __future__ import annotations

import itertools
import json
import logging
import os
import sys
import uuid
from collections.abc import Iterable
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pyogrio
import shapely
from pyproj import CRS, Geod

from geodetect.errors import OutputError
from geodetect.io.styles import STYLES, qml_path, write_gpkg_style
from geodetect.io.units import map_scale

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


def side_path(out: str | os.PathLike, layer: str) -> Path | None:
    """Where a side layer (e.g. ``coverage``) of the output ``out`` goes: inside it for a
    GeoPackage (None), else a file beside it, ``<name>.<layer><ext>`` in the same format."""
    path = Path(out)
    if output_format(out) == "GPKG":
        return None
    return path.with_name(f"{path.stem}.{layer}{path.suffix}")


def coverage_path(out: str | os.PathLike) -> Path | None:
    """Where ``geodetect detect --out OUT`` writes its coverage (see :func:`side_path`)."""
    return side_path(out, "coverage")


def check_output(
    out: str | os.PathLike, *, overwrite: bool = False, side_layers: Iterable[str] = ()
) -> None:
    """Fail early, before any work, if ``out`` (and the files of its ``side_layers``
    beside it, for formats with one layer per file) cannot be written."""
    output_format(out)
    if str(out) == "-":
        return
    path = Path(out)
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: already exists; pass --overwrite to replace it")
    for name in side_layers:
        side = side_path(out, name)
        if side is not None and side.exists() and not overwrite:
            raise OutputError(
                f"{side}: already exists (the {name} layer of {path.name}); pass "
                "--overwrite to replace it"
            )
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
    """Areas in square metres on the ground: geodesic on the ellipsoid for geographic
    CRSs; for projected ones, planar areas scaled by the linear unit and, where the
    projection's scale is off 1 by more than 1 % (Web Mercator: areas doubled at 45
    degrees), divided by its square at each geometry (see
    :func:`~geodetect.io.units.map_scale`); NaN when there is no CRS."""
    geoms = np.asarray(geometries, dtype=object)
    if crs is None:
        return np.full(len(geoms), np.nan)
    crs = CRS.from_user_input(crs)
    if crs.is_geographic:
        geod = crs.get_geod() or Geod(ellps="WGS84")
        return np.array([abs(geod.geometry_area_perimeter(g)[0]) for g in geoms], dtype=float)
    factor = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
    centres = shapely.get_coordinates(shapely.centroid(geoms))
    return shapely.area(geoms) * (factor / map_scale(crs, centres[:, 0], centres[:, 1])) ** 2


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
    multi: bool = False,
    style: str | None = None,
) -> Path | None:
    """Write ``gdf`` to ``out`` in the format its extension names.

    The file appears atomically: data goes to a hidden temp file in the same folder,
    which is renamed over ``out`` only once complete. ``out == "-"`` writes RFC 7946
    GeoJSON to stdout. Returns the written path (None for stdout). ``multi``: the
    geometries are MultiPolygons (polygons are written as one-part MultiPolygons).
    """
    if multi:
        gdf = _with_multi(gdf)
    kind = "MultiPolygon" if multi else "Polygon"
    return write_batches(
        [gdf], out, overwrite=overwrite, layer=layer, geometry_type=kind, style=style
    )


def _write_qml(path: Path, qml: str, *, overwrite: bool) -> None:
    """The style beside ``path``, where QGIS loads it with the file; a .qml already
    there (the user's own) is kept unless ``overwrite``."""
    target = qml_path(path)
    if target.exists() and not overwrite:
        log.info("%s: kept as it is (pass --overwrite to replace it with geodetect's)", target)
        return
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(qml, encoding="utf-8")
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        log.warning("%s: the style could not be written (%s)", target, exc.strerror or exc)


def _with_multi(gdf: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """``gdf`` with its Polygons as one-part MultiPolygons."""
    geometries = np.array(gdf.geometry.values, dtype=object)
    single = shapely.get_type_id(geometries) == int(shapely.GeometryType.POLYGON)
    geometries[single] = [shapely.MultiPolygon([g]) for g in geometries[single]]
    return gdf.set_geometry(gpd.GeoSeries(geometries, index=gdf.index, crs=gdf.crs))


def _write_side_layer(gdf: gpd.GeoDataFrame, path: Path, name: str) -> None:
    """Add layer ``name`` (MultiPolygons) to the GeoPackage at ``path``."""
    pyogrio.write_dataframe(
        _with_multi(gdf),
        path,
        layer=name,
        driver="GPKG",
        geometry_type="MultiPolygon",
    )


def write_batches(
    batches: Iterable[gpd.GeoDataFrame],
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    layer: str = "detections",
    extra: dict[str, gpd.GeoDataFrame] | None = None,
    geometry_type: str = "Polygon",
    style: str | None = None,
) -> Path | None:
    """Write a layer that arrives in pieces (GeoDataFrames with the same columns and
    CRS; at least one, possibly empty) without holding it whole: the pieces stream
    through Arrow into OGR, or into a Parquet writer, in one temp file renamed over
    ``out`` once complete, as :func:`write_layer` does. ``out == "-"`` gathers them for
    stdout. Returns the written path (None for stdout).

    ``extra`` side layers (name -> small GeoDataFrame, e.g. the coverage) go into the
    same GeoPackage, or each into a file beside ``out`` (:func:`side_path`), written
    before ``out`` is renamed into place; they are not written to stdout.

    ``style`` names a QGIS style of :mod:`geodetect.io.styles` (side layers take the one
    named like them, where there is one): stored in the GeoPackage, or written as
    ``<name>.qml`` beside other files (an existing one kept unless ``overwrite``).
    """
    driver = output_format(out)
    batches = iter(batches)
    first = next(batches)
    extra = extra or {}
    if str(out) == "-":
        gdf = gpd.GeoDataFrame(pd.concat([first, *batches], ignore_index=True), crs=first.crs)
        text = _rfc7946(gdf, out).to_json(drop_id=True, to_wgs84=False)
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        return None
    check_output(out, overwrite=overwrite, side_layers=extra)
    path = Path(out)
    crs = first.crs
    if driver == "GeoJSON":
        _rfc7946(first.iloc[:0], out)  # no CRS: refused before anything is written
        crs = CRS.from_epsg(4326)
    schema = _arrow_schema(first, parquet=driver == "parquet", geometry_type=geometry_type)
    tables = (
        _to_arrow(_rfc7946(b, out) if driver == "GeoJSON" else b, schema)
        for b in itertools.chain([first], batches)
    )
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        if driver == "parquet":
            with pq.ParquetWriter(tmp, schema) as writer:
                for table in tables:
                    writer.write_batch(table)
        else:
            options = {"RFC7946": "YES"} if driver == "GeoJSON" else {}
            pyogrio.write_arrow(
                pa.RecordBatchReader.from_batches(schema, tables),
                tmp,
                driver=driver,
                layer=None if driver == "GeoJSON" else layer,
                geometry_name="geometry",
                geometry_type=geometry_type,
                crs=crs.to_wkt() if crs is not None else None,
                layer_options=options or None,
            )
        for name, side in extra.items():
            if driver == "GPKG":
                _write_side_layer(side, tmp, name)
            else:
                side_style = name if name in STYLES else None
                write_layer(
                    side, side_path(out, name), overwrite=True, multi=True, style=side_style
                )
        if driver == "GPKG":
            for name, kind in ((layer, style), *((n, n) for n in extra)):
                if kind in STYLES:
                    write_gpkg_style(tmp, name, STYLES[kind]())
        for src, dst in _renames(tmp, path, driver):
            os.replace(src, dst)
        if style is not None and driver != "GPKG":
            _write_qml(path, STYLES[style](), overwrite=overwrite)
    except BaseException as exc:
        _cleanup(tmp, driver)
        if isinstance(exc, _WRITE_ERRORS):
            raise OutputError(f"{path}: could not write ({exc}); nothing was written") from None
        raise
    return path


def _arrow_schema(gdf: gpd.GeoDataFrame, *, parquet: bool, geometry_type: str) -> pa.Schema:
    """The Arrow schema of a layer: its attribute columns (text as strings) and WKB
    geometry, marked for OGR, or described by GeoParquet metadata."""
    fields = []
    for name in gdf.columns:
        if name == gdf.geometry.name:
            continue
        dtype = gdf[name].dtype
        kind = pa.string() if dtype.kind in "OSU" else pa.from_numpy_dtype(dtype)
        fields.append(pa.field(name, kind))
    geometry = pa.field("geometry", pa.binary(), metadata={"ARROW:extension:name": "ogc.wkb"})
    if not parquet:
        return pa.schema([*fields, geometry])
    crs = gdf.crs
    geo = {
        "version": "1.0.0",
        "primary_column": "geometry",
        "columns": {
            "geometry": {
                "encoding": "WKB",
                "geometry_types": [geometry_type],
                "crs": crs.to_json_dict() if crs is not None else None,
            }
        },
    }
    return pa.schema(
        [*fields, pa.field("geometry", pa.binary())], metadata={"geo": json.dumps(geo)}
    )


def _to_arrow(gdf: gpd.GeoDataFrame, schema: pa.Schema) -> pa.RecordBatch:
    columns = [
        shapely.to_wkb(gdf.geometry.values, flavor="iso")
        if f.name == "geometry"
        else gdf[f.name].to_numpy()
        for f in schema
    ]
    # from_pandas: a missing text value (None or NaN, as pandas keeps it) is a null.
    arrays = [
        pa.array(c, type=f.type, from_pandas=True) for c, f in zip(columns, schema, strict=True)
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


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
