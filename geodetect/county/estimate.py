"""From a filled review to the county's total with a 95 % confidence interval.

The estimator, and why:

- **Detections that are pools** (``T``): the score strata were drawn at random, so each
  stratum's share of pools ``p_h`` among its ``n_h`` judged detections estimates the
  share among its ``N_h`` detections; ``T = sum N_h p_h``, with the stratified-sample
  variance ``sum N_h^2 (1 - n_h/N_h) p_h (1 - p_h) / (n_h - 1)`` (Cochran). Stratifying
  by score puts checks where the errors are.
- **Recall** (``r``): in the random search squares every pool is known (the layer's,
  judged, and the ones the reviewer drew); ``r`` is the pools the layer found there over
  all pools there, a ratio over squares whose variance comes from the spread between
  squares (a cluster sample: pools near each other are missed together).
- **Total** ``N = T / r``. The two samples are independent, so the relative variances
  add (delta method); the interval is taken on the log scale,
  ``N exp(+/- 1.96 sqrt(var T / T^2 + var r / r^2))``, since a ratio's error is skewed
  (a symmetric interval can reach below the pools already confirmed).
- **Water area**: the same with each pool's area in place of a count.
- **Rejections**: the share of each reason among the estimated false alarms.

The interval covers sampling error only: a reviewer's mistakes, and pools the squares
could not show, are not in it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from geodetect.county.review import STRATA
from geodetect.errors import InputError
from geodetect.io.review import REASONS, parse_verdicts, squares_done

Z95 = 1.959964


@dataclass(frozen=True)
class Estimate:
    """The county total and its 95 % interval, and what it came from."""

    pools: float
    pools_low: float
    pools_high: float
    water_m2: float
    water_low: float
    water_high: float
    detections: int
    precision: float
    recall: float
    reasons: dict[str, float] = field(default_factory=dict)
    strata: list[dict] = field(default_factory=list)
    squares: int = 0
    missed: int = 0

    def to_dict(self) -> dict:
        out = dict(self.__dict__)
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


def estimate(
    items: gpd.GeoDataFrame,
    squares: gpd.GeoDataFrame,
    missed: gpd.GeoDataFrame,
    strata: pd.DataFrame,
    *,
    source: str = "review",
    partial: bool = False,
) -> Estimate:
    """The estimate from a filled review (see the module's docstring).

    Args:
        items, squares, missed, strata: the review's layers as filled in (see
            :class:`~geodetect.county.review.Review`).
        partial: use the judged detections and done squares only, when the review is
            not finished (said in the result's counts), instead of refusing.

    Raises:
        InputError: the review is unfinished (and not ``partial``) or too small.
    """
    verdict = parse_verdicts(items, source=source)
    done = squares_done(squares)
    open_items, open_squares = int((verdict < 0).sum()), int((~done).sum())
    if (open_items or open_squares) and not partial:
        raise InputError(
            f"{source}: the review is not finished: {open_items} of {len(items)} "
            f"detection(s) have no verdict and {open_squares} of {len(squares)} square(s) "
            "are not marked done; finish it in QGIS, or pass --partial to estimate from "
            "what is filled in"
        )
    area = items["area_m2"].to_numpy(dtype=np.float64)
    sample = items["in_sample"].to_numpy(dtype=bool) & (verdict >= 0)
    stratum = items["stratum"].to_numpy(dtype=np.int64)

    total, var_total, water, var_water, rows = 0.0, 0.0, 0.0, 0.0, []
    for row in strata.itertuples():
        sel = sample & (stratum == row.stratum)
        n_h, big_n = int(sel.sum()), int(row.size)
        # A stratum judged whole (a layer of a few detections) is known without error.
        if n_h < min(2, big_n):
            raise InputError(
                f"{source}: score stratum {row.stratum} has {n_h} judged detection(s); "
                "at least 2 are needed"
            )
        y = verdict[sel].astype(np.float64)
        w = y * area[sel]
        fpc = 1.0 - n_h / big_n
        total += big_n * y.mean()
        water += big_n * w.mean()
        if n_h < big_n:
            var_total += big_n**2 * fpc * y.var(ddof=1) / n_h
            var_water += big_n**2 * fpc * w.var(ddof=1) / n_h
        rows.append(
            {
                "stratum": int(row.stratum),
                "scores": [round(float(row.lower), 4), round(float(row.upper), 4)],
                "detections": big_n,
                "judged": n_h,
                "precision": round(float(y.mean()), 4),
            }
        )

    found_n, found_a, all_n, all_a, missed_n = _square_counts(
        items, squares, missed, verdict, done, area
    )
    if len(found_n) < 2:
        raise InputError(f"{source}: {len(found_n)} search square(s) done; at least 2 are needed")
    recall, var_recall = _ratio(found_n, all_n)
    if total > 0 and not recall > 0:  # a total over a recall of 0 (or unknown) is no number
        raise InputError(
            f"{source}: none of the {len(found_n)} done search square(s) holds a pool the "
            "layer found, so the share of pools it finds is unknown; draw more or larger "
            "squares ('geodetect sample --squares/--square-size') and review those"
        )
    area_recall, var_area_recall = _ratio(found_a, all_a)
    pools, low, high = _total(total, var_total, recall, var_recall)
    water_m2, water_low, water_high = _total(water, var_water, area_recall, var_area_recall)

    reasons = _reasons(items, verdict, sample, stratum, strata)
    detections = int(strata["size"].sum())
    return Estimate(
        pools,
        low,
        high,
        water_m2,
        water_low,
        water_high,
        detections,
        total / detections if detections else math.nan,
        recall,
        reasons,
        rows,
        int(len(found_n)),
        int(missed_n),
    )


def _square_counts(items, squares, missed, verdict, done, area):
    """Per done square: pools the layer found (judged pool), and all pools (those plus
    the ones drawn as missed, by centroid), in counts and in area."""
    in_square = items["square"].to_numpy(dtype=np.int64)
    ids = squares["square"].to_numpy(dtype=np.int64)[done]
    boxes = squares.geometry.to_numpy()[done]
    missed = missed.to_crs(squares.crs) if len(missed) else missed
    drawn = missed.geometry.to_numpy() if len(missed) else np.empty(0, dtype=object)
    drawn = drawn[~shapely.is_missing(drawn)] if len(drawn) else drawn
    where = np.full(len(drawn), -1, dtype=np.int64)
    if len(drawn) and len(boxes):
        point, square = shapely.STRtree(boxes).query(shapely.centroid(drawn), predicate="within")
        where[point] = square
    drawn_area = _area_m2(drawn, squares.crs)
    found_n, found_a, all_n, all_a = [], [], [], []
    for k, square in enumerate(ids):
        pools = (in_square == square) & (verdict == 1)
        extra = where == k
        found_n.append(pools.sum())
        found_a.append(area[pools].sum())
        all_n.append(pools.sum() + extra.sum())
        all_a.append(area[pools].sum() + drawn_area[extra].sum())
    return (
        np.array(found_n, float),
        np.array(found_a, float),
        np.array(all_n, float),
        np.array(all_a, float),
        int((where >= 0).sum()),
    )


def _area_m2(geoms: np.ndarray, crs) -> np.ndarray:
    if not len(geoms):
        return np.zeros(0)
    from geodetect.io.export import area_m2

    return area_m2(geoms, crs)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> tuple[float, float]:
    """The ratio of totals over clusters and its variance (a cluster sample's ratio
    estimator, with the finite-population term left out)."""
    k = len(numerator)
    if denominator.sum() <= 0:
        return math.nan, math.nan
    ratio = numerator.sum() / denominator.sum()
    mean = denominator.mean()
    residual = numerator - ratio * denominator
    var = (residual**2).sum() / (k - 1) / k / mean**2
    return float(ratio), float(var)


def _total(t: float, var_t: float, r: float, var_r: float) -> tuple[float, float, float]:
    """``t / r`` with its 95 % interval on the log scale."""
    if not (t > 0 and r > 0):
        return (0.0, 0.0, 0.0) if t == 0 else (math.nan, math.nan, math.nan)
    value = t / r
    spread = Z95 * math.sqrt(var_t / t**2 + var_r / r**2)
    return value, value * math.exp(-spread), value * math.exp(spread)


def _reasons(items, verdict, sample, stratum, strata) -> dict[str, float]:
    """Each rejection reason's share of the estimated false alarms."""
    reason = items["reason"].astype(object).where(items["reason"].notna(), "")
    reason = reason.astype(str).str.strip().str.lower().to_numpy()
    weights = np.zeros(len(items))
    for row in strata.itertuples():
        sel = sample & (stratum == row.stratum)
        if sel.any():
            weights[sel] = row.size / sel.sum()
    rejected = sample & (verdict == 0)
    total = weights[rejected].sum()
    if total <= 0:
        return {}
    names = [*REASONS, "unstated"]
    label = np.where(np.isin(reason, REASONS), reason, "unstated")
    return {n: round(float(weights[rejected & (label == n)].sum() / total), 4) for n in names}


__all__ = ["STRATA", "Estimate", "estimate", "parse_verdicts"]
