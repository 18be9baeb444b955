"""From the owned detections of every block to the published layer.

Each block's table holds the detections its chips own, in grid pixels. The merge puts
them in one canonical order (grid, chip, then the chip's own order), so the layer does
not depend on block size, worker count or the order blocks finished in; joins the pieces
of objects larger than the chip overlap; maps boxes to the target CRS; and removes what
the seams still double with class-wise NMS.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import geopandas as gpd
import numpy as np
import pandas as pd

from geodetect.geometry import merge_pieces, nms_polygons, pixel_boxes_to_map
from geodetect.io.export import area_m2
from geodetect.io.raster import MosaicGrid, to_pyproj
from geodetect.model import ModelSpec

log = logging.getLogger(__name__)

# One row per owned detection; boxes and windows in grid pixel-edge coordinates.
TABLE_COLUMNS = {
    "grid": np.int32,
    "chip": np.int64,
    "x0": np.float64,
    "y0": np.float64,
    "x1": np.float64,
    "y1": np.float64,
    "score": np.float64,
    "label": np.int64,
    "piece": np.bool_,
    "wx0": np.float64,
    "wy0": np.float64,
    "wx1": np.float64,
    "wy1": np.float64,
    "source": object,
}


def empty_table() -> dict[str, np.ndarray]:
    return {name: np.empty(0, dtype=dtype) for name, dtype in TABLE_COLUMNS.items()}


def concat_tables(tables: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    tables = list(tables)
    if not tables:
        return empty_table()
    return {
        name: np.concatenate([t[name] for t in tables]).astype(dtype, copy=False)
        for name, dtype in TABLE_COLUMNS.items()
    }


def merge_tables(
    tables: Iterable[dict[str, np.ndarray]],
    grids: Sequence[MosaicGrid],
    *,
    crs,
    nms_iou: float,
    metric: str,
) -> gpd.GeoDataFrame:
    """All owned detections as polygons in ``crs`` after the seam merge and NMS.

    Returns a GeoDataFrame with ``score``, ``label`` and ``source`` columns.
    """
    table = concat_tables(tables)
    order = np.lexsort((table["chip"], table["grid"]))  # stable: keeps each chip's order
    table = {name: column[order] for name, column in table.items()}
    target_crs = to_pyproj(crs)
    columns = ["score", "label", "source"]
    frames = []
    for gi in np.unique(table["grid"]):
        grid = grids[int(gi)]
        sel = table["grid"] == gi
        boxes = np.stack([table[c][sel] for c in ("x0", "y0", "x1", "y1")], axis=1)
        windows = np.stack([table[c][sel] for c in ("wx0", "wy0", "wx1", "wy1")], axis=1)
        keep, boxes = merge_pieces(
            boxes, table["score"][sel], table["label"][sel], table["piece"][sel], windows
        )
        frame = gpd.GeoDataFrame(
            {c: table[c][sel][keep] for c in columns},
            geometry=pixel_boxes_to_map(boxes, grid.transform),
            crs=to_pyproj(grid.crs),
        )
        if grid.crs is not None and crs is not None and grid.crs != crs:
            log.info(
                "%s and the files on its grid are in another CRS than the layer; their "
                "detections are reprojected",
                grid.paths[0].name,
            )
            frame = frame.to_crs(target_crs)
        frames.append(frame)
    if frames:
        gdf = gpd.GeoDataFrame(
            pd.concat(frames, ignore_index=True), geometry="geometry", crs=target_crs
        )
    else:
        gdf = gpd.GeoDataFrame({c: [] for c in columns}, geometry=[], crs=target_crs)
    keep = nms_polygons(
        gdf.geometry.values,
        gdf["score"].to_numpy(),
        gdf["label"].to_numpy(),
        threshold=nms_iou,
        metric=metric,
    )
    return gdf.iloc[keep].reset_index(drop=True)


def to_layer(gdf: gpd.GeoDataFrame, spec: ModelSpec, model_id: str) -> gpd.GeoDataFrame:
    """Attach the published attribute columns to merged detections."""
    classes = np.asarray(spec.classes, dtype=object)
    labels = gdf["label"].to_numpy(dtype=np.int64) if len(gdf) else np.empty(0, np.int64)
    return gpd.GeoDataFrame(
        {
            "class": classes[labels] if len(labels) else np.empty(0, dtype=object),
            "score": gdf["score"].to_numpy(dtype=np.float64).round(4),
            "area_m2": area_m2(gdf.geometry.values, gdf.crs).round(3),
            "source": gdf["source"].astype(str).to_numpy(),
            "model_id": np.full(len(gdf), model_id, dtype=object),
        },
        geometry=gdf.geometry.values,
        crs=gdf.crs,
    )
