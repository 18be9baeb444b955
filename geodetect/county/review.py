"""A review sample: what a person checks in QGIS so that a layer becomes a count with a
confidence interval (and better training labels).

Two parts, drawn at random with a seed:

- **Detections, stratified by score.** The layer's detections are cut into
  :data:`STRATA` strata of equal size by score (whatever the model's score scale), and
  the same number is drawn from each (all of a stratum smaller than that): low scores,
  where the errors are, get as many checks as high ones. The reviewer fills ``verdict``
  (``pool`` / ``not_pool``) and, for rejections, ``reason`` (``tarp``, ``solar``,
  ``above_ground``, ``other``). They give the precision of each stratum.
- **Search squares** placed at random over the ground the run looked at (its coverage,
  within ``aoi`` if given), not overlapping. The reviewer judges every detection in them
  (they are in the sample too) and draws each pool the layer missed there into the
  ``missed`` layer, then sets the square's ``done`` to ``yes``. They give the recall.

The written review holds three layers: ``review`` (the detections to judge),
``squares`` and ``missed`` (empty, for the reviewer's drawings). Reading it back once
filled (the verdicts, the done squares, the training labels) is
:mod:`geodetect.io.review`, which defines the layers and the values a reviewer may type.
"""

from __future__ import annotations

import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from geodetect.county.layers import DetectionLayer, require_coverage, work_crs
from geodetect.errors import InputError
from geodetect.io.review import REVIEW_LAYERS
from geodetect.io.vectors import layer_name

STRATA = 4


@dataclass(frozen=True)
class Review:
    """The sample to review.

    Attributes:
        items: the detections to judge: ``review_id``, ``stratum`` (its score stratum,
            0 = lowest scores), ``in_sample`` (drawn from its stratum; False for one
            that is only in a square),
            ``square`` (the search square holding its centre, or -1), the detection's
            fields, and empty ``verdict`` and ``reason``.
        squares: ``square``, ``area_m2``, empty ``done``.
        missed: empty layer for the pools the reviewer finds missing in the squares.
        strata: per stratum: ``stratum``, ``lower`` and ``upper`` score, ``size`` (N_h,
            detections in the layer) and ``drawn`` (n_h).
    """

    items: gpd.GeoDataFrame
    squares: gpd.GeoDataFrame
    missed: gpd.GeoDataFrame
    strata: pd.DataFrame


def draw_review(
    layer: DetectionLayer,
    *,
    n: int = 200,
    squares: int = 20,
    square_size: float = 100.0,
    seed: int = 0,
    aoi: gpd.GeoDataFrame | None = None,
) -> Review:
    """Draw ``n`` detections stratified by score and ``squares`` search squares of
    ``square_size`` metres (see the module's docstring).

    Raises:
        InputError: no coverage, nothing to sample, or no room for the squares.
    """
    require_coverage(layer)
    if n < STRATA * 2:
        raise InputError(f"--n {n}: draw at least {STRATA * 2} (two per score stratum)")
    if squares < 2:
        raise InputError(f"--squares {squares}: at least 2 (the recall's error needs two)")
    if not (math.isfinite(square_size) and square_size > 0):
        raise InputError(f"--square-size {square_size}: give a side in metres above 0")
    rng = np.random.default_rng(seed)
    work = work_crs(layer.detections)
    detections = layer.detections.to_crs(work).reset_index(drop=True)
    ground = layer.coverage.to_crs(work).geometry.union_all()
    if aoi is not None:
        area = aoi.to_crs(work).geometry.union_all()
        ground = ground.intersection(area)
        detections = detections[shapely.within(detections.geometry.centroid.values, area)]
        detections = detections.reset_index(drop=True)
    if not len(detections) and aoi is None:
        raise InputError(
            f"{layer.path}: has no detections, so there is nothing to review; check that "
            "it is the layer 'geodetect detect' wrote for the area (an empty one found no pool)"
        )
    if not len(detections):
        raise InputError(
            f"{layer.path}: has no detections inside the AOI ({layer_name(aoi, 'aoi')}), so "
            "there is nothing to review; give an --aoi that overlaps the layer"
        )

    scores = detections["score"].to_numpy(dtype=np.float64)
    stratum, table = _strata(scores, n, rng)
    table["layer_size"] = len(layer.detections)  # to tell the layer it was drawn from
    drawn = stratum >= 0
    boxes = _place_squares(ground, squares, square_size, rng)
    in_square = _square_of(detections.geometry.centroid.values, boxes)
    keep = drawn | (in_square >= 0)

    items = detections[keep].copy()
    items.insert(0, "review_id", np.arange(len(items), dtype=np.int64))
    rank = _score_strata(scores, table)
    items.insert(1, "stratum", np.where(drawn, stratum, rank)[keep].astype(np.int64))
    items.insert(2, "in_sample", drawn[keep])
    items.insert(3, "square", in_square[keep].astype(np.int64))
    items["verdict"] = ""
    items["reason"] = ""
    squares_layer = gpd.GeoDataFrame(
        {
            "square": np.arange(len(boxes), dtype=np.int64),
            "area_m2": shapely.area(boxes).round(1),
            "done": "",
        },
        geometry=list(boxes),
        crs=work,
    )
    missed = gpd.GeoDataFrame({"note": pd.Series([], dtype=str)}, geometry=[], crs=work)
    crs = layer.detections.crs
    return Review(items.to_crs(crs), squares_layer.to_crs(crs), missed.to_crs(crs), table)


def _strata(scores: np.ndarray, n: int, rng) -> tuple[np.ndarray, pd.DataFrame]:
    """Equal-size score strata and an equal draw from each: the stratum of each drawn
    detection (-1: not drawn) and the strata's table."""
    order = np.argsort(scores, kind="stable")
    parts = np.array_split(order, STRATA)
    parts = [p for p in parts if len(p)]
    per = n // len(parts)
    extra = n - per * len(parts)
    stratum = np.full(len(scores), -1, dtype=np.int64)
    rows = []
    for h, part in enumerate(parts):
        want = min(len(part), per + (1 if h >= len(parts) - extra else 0))
        chosen = rng.choice(part, size=want, replace=False)
        stratum[chosen] = h
        rows.append(
            {
                "stratum": h,
                "lower": float(scores[part].min()),
                "upper": float(scores[part].max()),
                "size": len(part),
                "drawn": want,
            }
        )
    return stratum, pd.DataFrame(rows)


def _score_strata(scores: np.ndarray, table: pd.DataFrame) -> np.ndarray:
    """The stratum each score falls in (by the strata's lower bounds)."""
    lowers = table["lower"].to_numpy()
    return np.clip(np.searchsorted(lowers, scores, side="right") - 1, 0, len(lowers) - 1)


def _place_squares(ground, count: int, size: float, rng) -> np.ndarray:
    """``count`` non-overlapping squares at uniformly random places, each at least 95 %
    inside ``ground``."""
    if ground is None or ground.is_empty or ground.area < count * size * size:
        raise InputError(
            f"the covered ground ({0 if ground is None else ground.area / 1e6:.3g} km2) "
            f"cannot hold {count} search squares of {size:g} m; use fewer or smaller squares"
        )
    shapely.prepare(ground)
    x0, y0, x1, y1 = ground.bounds
    placed: list = []
    for _ in range(count * 400):
        if len(placed) == count:
            break
        x = rng.uniform(x0, x1 - size) if x1 - x0 > size else x0
        y = rng.uniform(y0, y1 - size) if y1 - y0 > size else y0
        box = shapely.box(x, y, x + size, y + size)
        if ground.intersection(box).area < 0.95 * size * size:
            continue
        if any(box.intersects(p) for p in placed):
            continue
        placed.append(box)
    if len(placed) < count:
        raise InputError(
            f"found room for only {len(placed)} of {count} search squares of {size:g} m in "
            "the covered ground; use fewer or smaller squares"
        )
    return np.array(placed, dtype=object)


def _square_of(points: np.ndarray, squares: np.ndarray) -> np.ndarray:
    """The square holding each point (-1: none)."""
    out = np.full(len(points), -1, dtype=np.int64)
    if not len(points) or not len(squares):
        return out
    point, square = shapely.STRtree(squares).query(points, predicate="within")
    out[point] = square
    return out


def write_review(review: Review, out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write the review as one GeoPackage (its four layers, with styles), atomically."""
    import pyogrio

    from geodetect.io.export import check_output
    from geodetect.io.styles import STYLES, write_gpkg_style

    path = Path(out)
    if path.suffix.lower() != ".gpkg":
        raise InputError(f"{out}: a review is a GeoPackage (its layers go together); use .gpkg")
    check_output(path, overwrite=overwrite)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp.gpkg")
    try:
        for name, frame in zip(
            REVIEW_LAYERS,
            (review.items, review.squares, review.missed, review.strata),
            strict=True,
        ):
            if isinstance(frame, gpd.GeoDataFrame):
                # The reviewer draws into "missed": it must be a polygon layer while empty.
                kind = "MultiPolygon" if name == "missed" else "Polygon"
                pyogrio.write_dataframe(
                    frame, tmp, layer=name, driver="GPKG", geometry_type=kind,
                    promote_to_multi=name == "missed",
                )  # fmt: skip
            else:
                pyogrio.write_dataframe(frame, tmp, layer=name, driver="GPKG")
        for name in ("review", "squares", "missed"):
            write_gpkg_style(tmp, name, STYLES[name]())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
