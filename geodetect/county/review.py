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
``squares`` and ``missed`` (empty, for the reviewer's drawings).
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

STRATA = 4
VERDICTS = ("pool", "not_pool")
REASONS = ("tarp", "solar", "above_ground", "other")
# What a reviewer may type in QGIS: verdicts and a square's ``done``.
_POOL = {"pool", "p", "yes", "y", "true", "1"}
_NOT_POOL = {"not_pool", "not pool", "notpool", "no", "n", "false", "0"}
_DONE = {"yes", "y", "true", "1", "done", "x"}


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
    if not len(detections):
        raise InputError(f"{layer.path}: has no detections to review (inside the AOI)")

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


REVIEW_LAYERS = ("review", "squares", "missed", "strata")


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


def read_review(
    path: str | os.PathLike,
) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame, gpd.GeoDataFrame, pd.DataFrame]:
    """The four layers of a review written by :func:`write_review`, as filled in.

    Raises:
        InputError: not such a review.
    """
    import pyogrio

    from geodetect.io.vectors import read_layer

    source = os.fspath(path)
    if not Path(source).is_file():
        raise InputError(f"{source}: no such file; give the review 'geodetect sample' wrote")
    names = [str(n) for n, _ in pyogrio.list_layers(source)]
    lacking = [n for n in REVIEW_LAYERS if n not in names]
    if lacking:
        raise InputError(
            f"{source}: not a review written by 'geodetect sample' (no layer "
            f"{', '.join(lacking)}); draw one with 'geodetect sample'"
        )
    items = read_layer(source, layer="review")
    fields = ("verdict", "reason", "in_sample", "stratum", "square", "area_m2")
    missing = [f for f in fields if f not in items.columns]
    if missing:
        raise InputError(f"{source}: the review layer lacks {', '.join(missing)}; keep its fields")
    return (
        items,
        read_layer(source, layer="squares"),
        read_layer(source, layer="missed"),
        pyogrio.read_dataframe(source, layer="strata", read_geometry=False),
    )


def parse_verdicts(items: pd.DataFrame, *, source: str) -> np.ndarray:
    """1 for pool, 0 for not a pool, -1 where nothing is filled in.

    Raises:
        InputError: a verdict that is neither (the first few named).
    """
    text = _text(items["verdict"])
    out = np.full(len(text), -1, dtype=np.int64)
    out[text.isin(_POOL).to_numpy()] = 1
    out[text.isin(_NOT_POOL).to_numpy()] = 0
    bad = (out < 0) & (text != "").to_numpy()
    if bad.any():
        shown = ", ".join(repr(v) for v in pd.unique(text[bad])[:3])
        raise InputError(
            f"{source}: {int(bad.sum())} verdict(s) are neither pool nor not_pool ({shown}); "
            "fill the verdict field with pool or not_pool"
        )
    return out


def squares_done(squares: pd.DataFrame) -> np.ndarray:
    """Whether the reviewer marked each search square done (bool [N])."""
    return _text(squares["done"]).isin(_DONE).to_numpy()


def _text(column: pd.Series) -> pd.Series:
    return column.astype(object).where(column.notna(), "").astype(str).str.strip().str.lower()


@dataclass(frozen=True)
class ReviewLabels:
    """What a filled review teaches a detector (``geodetect train --review``).

    Attributes:
        positives: the detections judged ``pool`` and the pools drawn into ``missed``,
            with a ``class`` column.
        rejected: the detections judged ``not_pool``, with their ``reason``: hard
            negatives.
        known: where the review says everything there is: each judged detection's and
            drawn pool's own outline, and every search square marked done (the
            reviewer drew all its missed pools). Elsewhere nothing is known, so nothing
            there may be learnt as background.
        counts: ``confirmed``, ``rejected``, ``missed``, ``squares`` (done),
            ``unjudged`` (left out) and ``reasons`` (rejections by reason).
    """

    positives: gpd.GeoDataFrame
    rejected: gpd.GeoDataFrame
    known: gpd.GeoDataFrame
    counts: dict


def review_labels(path: str | os.PathLike, *, default_class: str = "pool") -> ReviewLabels:
    """Training labels from a review filled in QGIS (see :class:`ReviewLabels`).

    Detections keep the class the layer gave them; pools drawn into ``missed`` take
    their ``class`` field when they have one, else the single class of the confirmed
    detections (``default_class`` when there are none). Unjudged detections are left
    out, and counted.

    Raises:
        InputError: not a review, a verdict that is neither, nothing judged at all, or
            drawn pools whose class cannot be told.
    """
    source = os.fspath(path)
    items, squares, missed, _ = read_review(source)
    verdict = parse_verdicts(items, source=source)
    done = squares_done(squares)
    if not (verdict >= 0).any() and not done.any() and not len(missed):
        raise InputError(
            f"{source}: no detection judged and no square done; fill the review in QGIS "
            "before training from it"
        )
    crs = items.crs
    classes = (
        items["class"].astype(str)
        if "class" in items.columns
        else pd.Series(default_class, index=items.index)
    )
    confirmed = items[verdict == 1]
    found = sorted(set(classes[verdict == 1]))
    missed = missed[~missed.geometry.is_empty & missed.geometry.notna()].to_crs(crs)
    if "class" in missed.columns and _text(missed["class"]).ne("").all():
        missed_class = missed["class"].astype(str).to_numpy()
    elif len(found) <= 1:
        missed_class = np.full(len(missed), found[0] if found else default_class, dtype=object)
    else:
        raise InputError(
            f"{source}: the confirmed detections have classes {', '.join(found)}, so each "
            "pool drawn into 'missed' needs a 'class' field filled in"
        )
    positives = gpd.GeoDataFrame(
        {"class": np.concatenate([classes[verdict == 1].to_numpy(object), missed_class])},
        geometry=np.concatenate([confirmed.geometry.to_numpy(), missed.geometry.to_numpy()]),
        crs=crs,
    )
    rejected_items = items[verdict == 0]
    reason = _text(rejected_items["reason"])
    reason = reason.where(reason.isin(REASONS), "unstated")
    rejected = gpd.GeoDataFrame(
        {"reason": reason.to_numpy()}, geometry=rejected_items.geometry.to_numpy(), crs=crs
    )
    known = gpd.GeoDataFrame(
        geometry=np.concatenate(
            [
                items.geometry.to_numpy()[verdict >= 0],
                missed.geometry.to_numpy(),
                squares.to_crs(crs).geometry.to_numpy()[done],
            ]
        ),
        crs=crs,
    )
    counts = {
        "confirmed": int((verdict == 1).sum()),
        "rejected": int((verdict == 0).sum()),
        "missed": len(missed),
        "squares": int(done.sum()),
        "unjudged": int((verdict < 0).sum()),
        "reasons": {k: int(v) for k, v in reason.value_counts().sort_index().items()},
    }
    return ReviewLabels(positives, rejected, known, counts)
