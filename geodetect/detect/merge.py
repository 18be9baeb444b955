"""From the owned detections of every block to the published layer.

Each block's table holds the detections its chips own, in grid pixels. The merge puts
them in one canonical order (grid, chip, then the chip's own order), so the layer does
not depend on block size, worker count or the order blocks finished in; joins the pieces
of objects larger than the chip overlap; maps boxes to the target CRS; and removes what
the seams still double with class-wise NMS.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from rasterio.warp import transform_bounds

from geodetect.detect.plan import Plan
from geodetect.geometry import Block, merge_pieces, nms_polygons, pixel_boxes_to_map, window_box
from geodetect.geometry.boxes import pixel_boxes_to_map_coords
from geodetect.geometry.merge import components
from geodetect.io.crs import to_pyproj
from geodetect.io.export import area_m2
from geodetect.io.raster import MosaicGrid
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


def concat_tables(
    tables: Iterable[dict[str, np.ndarray]], *, extra: Sequence[str] = ()
) -> dict[str, np.ndarray]:
    """One table of many; ``extra`` names int64 columns beyond :data:`TABLE_COLUMNS`."""
    tables = list(tables)
    columns = {**TABLE_COLUMNS, **dict.fromkeys(extra, np.int64)}
    if not tables:
        return {name: np.empty(0, dtype=dtype) for name, dtype in columns.items()}
    return {
        name: np.concatenate([t[name] for t in tables]).astype(dtype, copy=False)
        for name, dtype in columns.items()
    }


# Rows gathered before the settled ones are merged and handed on: bounds the number of
# NMS and write calls, not the result.
BATCH_ROWS = 20_000


def merged_batches(
    plan: Plan,
    read: Callable[[str], dict[str, np.ndarray]],
    *,
    crs,
    nms_iou: float,
    metric: str,
    second_iou: float | None = None,
    batch_rows: int = BATCH_ROWS,
) -> Iterator[gpd.GeoDataFrame]:
    """The merged layer, north to south, in GeoDataFrames of settled detections.

    The result equals a merge of every block's table at once (:func:`merge_tables`)
    while holding only a band of the scene: blocks are read in the order of their
    northern edges, and a detection is settled (merged and handed on) once nothing
    that could overlap it, read or still to come, remains. Pieces of objects cut by
    chip edges, few and large, are joined first over the whole run.

    Args:
        plan: the run's plan (grids, chip grids and blocks).
        read: block key -> the block's owned-detection table (the journal's ``read``).
        crs: the layer's CRS.
        nms_iou, metric, second_iou: what makes two detections one object (see
            :func:`geodetect.geometry.nms_polygons`).

    Yields:
        GeoDataFrames with ``score``, ``label`` and ``source`` columns in ``crs``, at
        least one (possibly empty). Rows run north to south by groups of
        overlapping detections (a group's northern edge, then each row's northern and
        western edge), the same order whatever the blocks.
    """
    target = to_pyproj(crs)
    grids = plan.grids
    for grid in grids:
        if _reprojected(grid, crs):
            log.info(
                "%s and the files on its grid are in another CRS than the layer; their "
                "detections are reprojected",
                grid.paths[0].name,
            )
    reach = np.array([_reach(plan, block, crs) for block in plan.blocks]).reshape(-1, 4)
    # Slack against rounding and reprojection: far below a pixel, far above float error.
    span = np.ptp(reach[:, [0, 2]]) + np.ptp(reach[:, [1, 3]]) if len(reach) else 0.0
    tol = 1e-6 * span + 1e-9
    north = -reach[:, 3] - tol  # s = -y grows southwards; a block's items have s >= north
    order = np.argsort(north, kind="stable")

    pending = _Items.join([_joined_pieces(plan, read, crs)])
    fresh, yielded = 0, False
    for step, bi in enumerate(order):
        table = _with_rows(read(plan.blocks[bi].key))
        wholes = _select(table, ~table["piece"])
        pending = _Items.join([pending, _Items.of(wholes, grids, crs)])
        fresh += len(wholes["score"])
        last = step + 1 == len(order)
        if fresh < batch_rows and not last:
            continue
        fresh = 0
        done, group_north, pending = pending.split(np.inf if last else north[order[step + 1]], tol)
        if len(done):
            yield _settle(done, group_north, target, nms_iou, metric, second_iou)
            yielded = True
    if not yielded:
        yield _settle(_Items.join([]), np.empty(0), target, nms_iou, metric, second_iou)


@dataclass(frozen=True)
class _Items:
    """Detections on their way through the streamed merge: final polygons in the
    layer's CRS, their bounds, and their canonical order key (grid, chip, row)."""

    geometry: np.ndarray
    bounds: np.ndarray  # [N, 4] minx, miny, maxx, maxy
    score: np.ndarray
    label: np.ndarray
    source: np.ndarray
    key: np.ndarray  # [N, 3] int64: grid, chip, row within the chip's detections

    def __len__(self) -> int:
        return len(self.score)

    @classmethod
    def join(cls, parts: Sequence[_Items]) -> _Items:
        parts = [p for p in parts if p is not None]
        if not parts:
            return cls(
                np.empty(0, dtype=object),
                np.empty((0, 4)),
                np.empty(0),
                np.empty(0, dtype=np.int64),
                np.empty(0, dtype=object),
                np.empty((0, 3), dtype=np.int64),
            )
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in _ITEM_FIELDS))

    @classmethod
    def of(cls, table: dict[str, np.ndarray], grids: Sequence[MosaicGrid], crs) -> _Items:
        """One block's (or the joined pieces') rows with their polygons in ``crs``."""
        target = to_pyproj(crs)
        parts = []
        for gi in np.unique(table["grid"]):
            sel = table["grid"] == gi
            grid = grids[int(gi)]
            polygons = pixel_boxes_to_map(_boxes(table, sel), grid.transform)
            if _reprojected(grid, crs):
                polygons = gpd.GeoSeries(polygons, crs=to_pyproj(grid.crs)).to_crs(target).values
                polygons = np.asarray(polygons, dtype=object)
            key = np.stack([table["grid"][sel], table["chip"][sel], table["row"][sel]], axis=1)
            parts.append(
                cls(
                    polygons,
                    shapely.bounds(polygons).reshape(-1, 4),
                    table["score"][sel],
                    table["label"][sel],
                    table["source"][sel],
                    key.astype(np.int64),
                )
            )
        return cls.join(parts)

    def take(self, index: np.ndarray) -> _Items:
        return _Items(*(getattr(self, f)[index] for f in _ITEM_FIELDS))

    def split(self, line: float, tol: float) -> tuple[_Items, np.ndarray, _Items]:
        """(settled, their groups' northern edges, still open) when every unread item
        lies south of ``line`` (in s = -y, growing southwards).

        Items that come within ``tol`` of each other form groups (a group holds
        whatever NMS could make depend on each other). A group is open while an item
        of it reaches ``line``; the others settle once they start north of every open
        item, so that groups come out in order of their northern edges whatever the
        blocks were.
        """
        n = len(self)
        b = self.bounds
        left, right = shapely.STRtree(self.geometry).query(
            self.geometry, predicate="dwithin", distance=tol
        )
        group = components(n, left, right)
        north, south = -b[:, 3], -b[:, 1]
        groups = int(group.max()) + 1 if n else 0
        is_open = np.zeros(groups, dtype=bool)
        is_open[group[south >= line - tol]] = True
        is_open = is_open[group]
        first = min(line, north[is_open].min()) if is_open.any() else line
        group_north = np.full(groups, np.inf)
        np.minimum.at(group_north, group, north)
        group_north = group_north[group]
        settle = ~is_open & (group_north < first)
        return self.take(settle), group_north[settle], self.take(~settle)


_ITEM_FIELDS = ("geometry", "bounds", "score", "label", "source", "key")


def _with_rows(table: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``table`` with ``row``: each detection's place among its chip's detections (the
    runner writes a chip's detections together, so block size cannot change it)."""
    chip = table["chip"]
    n = len(chip)
    if not n:
        return {**table, "row": np.empty(0, dtype=np.int64)}
    start = np.r_[0, np.flatnonzero(chip[1:] != chip[:-1]) + 1]
    first = np.repeat(start, np.diff(np.r_[start, n]))
    return {**table, "row": np.arange(n) - first}


def _joined_pieces(plan: Plan, read, crs) -> _Items | None:
    """Every piece of a chip-cut object after :func:`merge_pieces`, whatever block it
    came from: pieces, and the whole boxes they touch, are read in a first pass."""
    pieces = [_select(t, t["piece"]) for t in (_with_rows(read(b.key)) for b in plan.blocks)]
    pieces = concat_tables(pieces, extra=("row",))
    if not len(pieces["score"]):
        return None
    # The whole boxes that may stand for a piece: those that overlap one of its grid.
    trees = {
        int(g): shapely.STRtree(shapely.box(*_boxes(pieces, pieces["grid"] == g).T))
        for g in np.unique(pieces["grid"])
    }
    witnesses = []
    for block in plan.blocks:
        if block.grid not in trees:
            continue
        table = _with_rows(read(block.key))
        table = _select(table, ~table["piece"])
        hit = trees[block.grid].query(shapely.box(*_boxes(table).T), predicate="intersects")[0]
        witnesses.append({name: column[np.unique(hit)] for name, column in table.items()})
    both = concat_tables([pieces, *witnesses], extra=("row",))
    order = np.lexsort((both["row"], both["chip"], both["grid"]))
    both = {name: column[order] for name, column in both.items()}
    joined = []
    for g in np.unique(both["grid"]):
        sel = np.flatnonzero(both["grid"] == g)
        keep, boxes = merge_pieces(
            _boxes(both, sel),
            both["score"][sel],
            both["label"][sel],
            both["piece"][sel],
            np.stack([both[c][sel] for c in ("wx0", "wy0", "wx1", "wy1")], axis=1),
        )
        piece = both["piece"][sel][keep]  # whole boxes pass unchanged and are read again
        kept = {name: column[sel][keep][piece] for name, column in both.items()}
        for i, name in enumerate(("x0", "y0", "x1", "y1")):
            kept[name] = boxes[piece, i]
        joined.append(kept)
    return _Items.of(concat_tables(joined, extra=("row",)), plan.grids, crs)


def _select(table: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    return {name: values[mask] for name, values in table.items()}


def _reprojected(grid: MosaicGrid, crs) -> bool:
    """Whether a grid's detections must be reprojected to reach the layer's CRS."""
    return grid.crs is not None and crs is not None and grid.crs != crs


def _boxes(table: dict[str, np.ndarray], sel=slice(None)) -> np.ndarray:
    return np.stack([table[c][sel] for c in ("x0", "y0", "x1", "y1")], axis=1).reshape(-1, 4)


def _reach(plan: Plan, block: Block, crs) -> tuple[float, float, float, float]:
    """Bounds in ``crs`` of everything a block's detections can cover: its chips'
    pixels (boxes never leave their chip)."""
    grid = plan.grids[block.grid]
    window = window_box(*block.window(plan.chip_grids[block.grid]))
    corners = pixel_boxes_to_map_coords(np.array([window], dtype=np.float64), grid.transform)[0]
    x0, y0 = corners.min(axis=0)
    x1, y1 = corners.max(axis=0)
    if _reprojected(grid, crs):
        return transform_bounds(grid.crs, crs, x0, y0, x1, y1, densify_pts=101)
    return x0, y0, x1, y1


def _settle(
    items: _Items,
    group_north: np.ndarray,
    target,
    nms_iou: float,
    metric: str,
    second_iou: float | None = None,
) -> gpd.GeoDataFrame:
    """NMS over closed groups of items in canonical order; the kept ones by their
    group's northern edge, then their own, then west to east."""
    canonical = np.lexsort(items.key.T[::-1])
    items, group_north = items.take(canonical), group_north[canonical]
    keep = np.sort(
        nms_polygons(
            items.geometry,
            items.score,
            items.label,
            threshold=nms_iou,
            metric=metric,
            second_iou=second_iou,
        )
    )
    items, group_north = items.take(keep), group_north[keep]
    reading = np.lexsort(
        (np.arange(len(items)), items.bounds[:, 0], -items.bounds[:, 3], group_north)
    )
    items = items.take(reading)
    return gpd.GeoDataFrame(
        {"score": items.score, "label": items.label, "source": items.source},
        geometry=items.geometry,
        crs=target,
    )


def merge_tables(
    tables: Iterable[dict[str, np.ndarray]],
    grids: Sequence[MosaicGrid],
    *,
    crs,
    nms_iou: float,
    metric: str,
    second_iou: float | None = None,
) -> gpd.GeoDataFrame:
    """All owned detections as polygons in ``crs`` after the seam merge and NMS, in one
    go (the reference :func:`merged_batches` streams to; rows by descending score).

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
        boxes = _boxes(table, sel)
        windows = np.stack([table[c][sel] for c in ("wx0", "wy0", "wx1", "wy1")], axis=1)
        keep, boxes = merge_pieces(
            boxes, table["score"][sel], table["label"][sel], table["piece"][sel], windows
        )
        frame = gpd.GeoDataFrame(
            {c: table[c][sel][keep] for c in columns},
            geometry=pixel_boxes_to_map(boxes, grid.transform),
            crs=to_pyproj(grid.crs),
        )
        if _reprojected(grid, crs):
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
        second_iou=second_iou,
    )
    return gdf.iloc[keep].reset_index(drop=True)


@dataclass(frozen=True)
class Provenance:
    """Where each feature came from, beyond its source file: the acquisition date and
    the GSD (metres) the file was read at, by file name, and the model's id and score
    threshold."""

    model_id: str
    threshold: float
    dates: dict[str, str | None] = field(default_factory=dict)
    gsds: dict[str, float | None] = field(default_factory=dict)


def to_layer(gdf: gpd.GeoDataFrame, spec: ModelSpec, origin: Provenance) -> gpd.GeoDataFrame:
    """Attach the published attribute columns to merged detections."""
    classes = np.asarray(spec.classes, dtype=object)
    labels = gdf["label"].to_numpy(dtype=np.int64) if len(gdf) else np.empty(0, np.int64)
    sources = gdf["source"].astype(str).to_numpy()
    gsd = [origin.gsds.get(s) for s in sources]
    return gpd.GeoDataFrame(
        {
            "class": classes[labels] if len(labels) else np.empty(0, dtype=object),
            "score": gdf["score"].to_numpy(dtype=np.float64).round(4),
            "area_m2": area_m2(gdf.geometry.values, gdf.crs).round(3),
            "source": sources,
            "model_id": np.full(len(gdf), origin.model_id, dtype=object),
            "date": np.array([origin.dates.get(s) for s in sources], dtype=object),
            "gsd_m": np.array([np.nan if g is None else round(g, 4) for g in gsd], dtype=float),
            "threshold": np.full(len(gdf), round(origin.threshold, 4), dtype=np.float64),
        },
        geometry=gdf.geometry.values,
        crs=gdf.crs,
    )
