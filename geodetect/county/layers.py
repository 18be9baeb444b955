"""A detection layer as the county commands read it: the detections and the ground the
run looked at (its coverage), which ``geodetect detect`` writes beside them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import shapely

from geodetect.errors import InputError, LabelError
from geodetect.io.export import area_m2, coverage_path
from geodetect.io.units import layer_utm
from geodetect.io.vectors import layer_name, read_layer, to_crs_checked


@dataclass(frozen=True)
class DetectionLayer:
    """Detections (``class``, ``score``, ``area_m2`` where present) and the coverage
    (None when the file has none), both in the detections' CRS."""

    path: str
    detections: gpd.GeoDataFrame
    coverage: gpd.GeoDataFrame | None


def read_detections(
    path: str | os.PathLike,
    *,
    coverage: str | os.PathLike | None = None,
    layer: str | None = None,
) -> DetectionLayer:
    """Read a layer ``geodetect detect`` wrote, with its coverage: the GeoPackage's
    ``coverage`` layer, the ``<name>.coverage<ext>`` file beside other formats, or the
    file ``coverage`` names.

    Raises:
        InputError / LabelError: the file cannot be read or has no CRS.
    """
    source = os.fspath(path)
    detections = read_layer(source, layer=layer)
    if "area_m2" not in detections.columns:
        detections["area_m2"] = area_m2(detections.geometry.values, detections.crs)
    if "date" in detections.columns:  # GeoJSON readers turn ISO dates into datetimes
        dates = pd.to_datetime(detections["date"], errors="coerce")
        detections["date"] = dates.dt.strftime("%Y-%m-%d").where(dates.notna(), None)
    if "score" not in detections.columns and not len(detections):
        # An empty GeoJSON keeps no field names: `detect` over ground without pools.
        detections["score"] = pd.Series(dtype=np.float64)
    if "score" not in detections.columns:
        raise LabelError(
            f"{source}: has no 'score' field; give a layer written by 'geodetect detect'"
        )
    found = _coverage_of(source) if coverage is None else read_layer(coverage)
    if found is not None:
        found = to_crs_checked(found, detections.crs)
    return DetectionLayer(source, detections, found)


def _coverage_of(source: str) -> gpd.GeoDataFrame | None:
    path = Path(source)
    if not path.is_file():
        return None
    try:
        side = coverage_path(path)
    except Exception:  # noqa: BLE001 - an extension geodetect does not write: no sidecar
        return None
    if side is None:
        names = [str(name) for name, _ in pyogrio.list_layers(path)]
        return read_layer(path, layer="coverage") if "coverage" in names else None
    return read_layer(side) if side.is_file() else None


def work_crs(*layers: gpd.GeoDataFrame):
    """A CRS in metres for areas and overlaps: the first projected one of ``layers``,
    else the UTM zone of the first that has features (:func:`~geodetect.io.units.layer_utm`)."""
    for layer in layers:
        if layer.crs.is_projected:
            return layer.crs
    for layer in layers:
        if len(layer):
            return layer_utm(layer.crs, layer.total_bounds)
    return layers[0].crs


def share_inside(geoms: np.ndarray, cover) -> np.ndarray:
    """Share of each geometry's area inside ``cover`` (0 where it has no area)."""
    share = np.zeros(len(geoms))
    if cover is None or cover.is_empty or not len(geoms):
        return share
    shapely.prepare(cover)
    inside = shapely.contains_properly(cover, geoms)
    share[inside] = 1.0
    partly = ~inside & shapely.intersects(cover, geoms)
    if partly.any():
        area = shapely.area(geoms[partly])
        cut = shapely.area(shapely.intersection(geoms[partly], cover))
        share[partly] = np.where(area > 0, cut / np.where(area > 0, area, 1.0), 0.0)
    return share


def require_field(frame: gpd.GeoDataFrame, name: str | None, option: str) -> None:
    """LabelError naming the layer's fields unless ``name`` (when given) is one."""
    if name is not None and name not in frame.columns:
        fields = ", ".join(c for c in frame.columns if c != frame.geometry.name)
        raise LabelError(
            f"{layer_name(frame, 'layer')}: has no field {name!r} ({option}); its fields: {fields}"
        )


def require_coverage(layer: DetectionLayer, option: str = "--coverage") -> None:
    """InputError unless the layer came with its coverage; ``option`` is the command's
    option that gives a coverage file."""
    if layer.coverage is None:
        raise InputError(
            f"{layer.path}: has no coverage (the ground the run looked at), so parcels "
            "without a pool cannot be told from parcels nobody looked at; rerun "
            f"'geodetect detect' with this version (it writes it), or pass {option} FILE"
        )
