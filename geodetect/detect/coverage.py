"""The coverage layer of a run: the ground it actually looked at, per source file.

Each committed block keeps the runs of cells its chips read with data
(:mod:`geodetect.geometry.coverage`) in its journal entry; here they become one
(multi)polygon per source file in the layer's CRS, so "no object here" can be told from
"nobody looked here": nodata, masked pixels, gaps between files and chips skipped as
damaged are not covered.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import geopandas as gpd
import numpy as np
import shapely

from geodetect.detect.plan import Plan
from geodetect.geometry import Block
from geodetect.geometry.coverage import CELL, empty_runs, merge_runs, runs_to_polygons
from geodetect.io.crs import to_pyproj
from geodetect.io.export import area_m2

COVERAGE_LAYER = "coverage"


def block_info_runs(info: dict | None) -> np.ndarray:
    """The runs a block's journal entry holds (none for an entry without them)."""
    if not info or not info.get("coverage"):
        return empty_runs()
    return np.asarray(info["coverage"], dtype=np.int64).reshape(-1, 4)


def coverage_layer(
    plan: Plan, info: Callable[[str], dict | None], crs, blocks: Sequence[Block] | None = None
) -> gpd.GeoDataFrame:
    """One feature per source file with data read: ``source`` (file name), ``area_m2``
    and its footprint of valid, read imagery, in ``crs`` (the detections' CRS).

    Args:
        plan: the run's plan (grids, blocks).
        info: block key -> what the store keeps for that block (``store.info``).
        crs: the layer's CRS (a grid CRS; None keeps the grids' own).
        blocks: the blocks to include (default: all of the plan's).
    """
    target = to_pyproj(crs)
    per_grid: dict[int, list[np.ndarray]] = {}
    for block in plan.blocks if blocks is None else blocks:
        per_grid.setdefault(block.grid, []).append(block_info_runs(info(block.key)))
    sources, shapes = [], []
    for gi, parts in sorted(per_grid.items()):
        grid = plan.grids[gi]
        polygons = runs_to_polygons(merge_runs(parts), CELL)
        if not polygons:
            continue
        files = sorted(polygons)
        # Cells end on the cell lattice, files on their own pixels: cut at the file's edge.
        geoms = shapely.intersection(
            np.array([polygons[f] for f in files], dtype=object),
            np.array([_footprint(grid.members[f]) for f in files], dtype=object),
        )
        geoms = shapely.transform(geoms, lambda xy, t=grid.transform: _apply(t, xy))
        series = gpd.GeoSeries(geoms, crs=to_pyproj(grid.crs))
        if target is not None and grid.crs is not None and to_pyproj(grid.crs) != target:
            series = series.to_crs(target)
        sources.extend(grid.members[f].info.path.name for f in files)
        shapes.extend(series.values)
    out_crs = (
        target if target is not None else (to_pyproj(plan.grids[0].crs) if plan.grids else None)
    )
    layer = gpd.GeoDataFrame({"source": sources}, geometry=list(shapes), crs=out_crs)
    if len(layer):
        # One feature per file, whatever grids it was read on.
        layer = layer.dissolve(by="source", as_index=False)
        layer.geometry = shapely.make_valid(layer.geometry.values)
    areas = area_m2(layer.geometry.values, layer.crs).round(1) if len(layer) else np.zeros(0)
    layer["area_m2"] = areas
    return layer[["source", "area_m2", "geometry"]]


def _footprint(member) -> shapely.Polygon:
    """A file's pixels on its grid (grid pixels, x = column)."""
    return shapely.box(*member.pixel_box)


def _apply(transform, xy: np.ndarray) -> np.ndarray:
    xs, ys = transform @ (xy[:, 0], xy[:, 1])
    return np.column_stack([xs, ys])
