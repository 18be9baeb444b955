"""Parcels and the tax roll: which parcels hold a pool, and where that disagrees with
the roll.

Each pool is counted once, in the parcel that holds the larger part of its footprint
(a pool cut by a parcel boundary is not counted twice). A parcel the imagery did not
cover, or covered only with nodata, is ``not_covered``: never reported as missing a
pool nobody looked for.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from geodetect.county.layers import (
    DetectionLayer,
    require_coverage,
    require_field,
    share_inside,
    work_crs,
)
from geodetect.errors import InputError, LabelError
from geodetect.io.vectors import layer_name, repair_geometries, to_crs_checked

log = logging.getLogger(__name__)

# Roll values understood, by form (case and surrounding spaces ignored). Empty or null
# means "not on the roll" (0).
_TRUE = ("yes", "y", "true", "t", "1")
_FALSE = ("no", "n", "false", "f", "0", "")
ROLL_FORMS = (
    "yes/no (y/n), true/false (t/f), 1/0, or a count of pools (0, 1, 2...); empty or null "
    "counts as 0"
)

# Status of each parcel, in the order the written layer lists them.
WITH_ROLL = ("new", "missing", "agrees", "not_covered")
WITHOUT_ROLL = ("pool", "no_pool", "not_covered")
# A parcel less than this share looked at cannot be said to lack a pool.
MIN_COVERED = 0.95


@dataclass(frozen=True)
class ParcelJoin:
    """The parcels with their pools and status, and what the join counted.

    Attributes:
        parcels: the parcel layer (its own CRS and fields) plus ``pools``, ``water_m2``,
            ``best_score``, ``covered`` (share of the parcel looked at), ``roll_pools``
            (with a roll) and ``status``; ``new`` parcels first, by best score.
        summary: counts: parcels by status, pools joined, pools below the minimum area,
            pools outside every parcel, parcels dropped for lacking a polygon.
    """

    parcels: gpd.GeoDataFrame
    summary: dict = field(default_factory=dict)


def parse_roll(values: pd.Series, *, source: str, field_name: str) -> tuple[np.ndarray, bool]:
    """The roll's pool count per parcel, and whether the field is a count (True) or a
    yes/no flag (False). Numbers other than 0 and 1 make it a count.

    Raises:
        LabelError: a value that is none of :data:`ROLL_FORMS` (the first few named).
    """
    if pd.api.types.is_bool_dtype(values):
        return values.fillna(False).to_numpy(dtype=np.int64), False
    if pd.api.types.is_numeric_dtype(values):
        numbers = values.to_numpy(dtype=np.float64)
        numbers = np.where(np.isnan(numbers), 0.0, numbers)
        bad = (numbers < 0) | (numbers != np.round(numbers))
        if bad.any():
            _bad_values(values[bad], source, field_name)
        counts = numbers.astype(np.int64)
        return counts, bool((counts > 1).any())
    text = values.astype(object).where(values.notna(), "").astype(str).str.strip().str.lower()
    counts = np.full(len(text), -1, dtype=np.int64)
    counts[text.isin(_TRUE).to_numpy()] = 1
    counts[text.isin(_FALSE).to_numpy()] = 0
    digits = text.str.fullmatch(r"\d+").to_numpy()
    is_count = bool((digits & ~text.isin(_TRUE + _FALSE).to_numpy()).any())
    counts[digits] = text[digits].astype(np.int64).to_numpy()
    if (counts < 0).any():
        _bad_values(values[counts < 0], source, field_name)
    return counts, is_count


def _bad_values(bad: pd.Series, source: str, field_name: str) -> None:
    shown = ", ".join(repr(v) for v in pd.unique(bad)[:3])
    raise LabelError(
        f"{source}: field {field_name!r} holds {len(bad)} value(s) that are not a roll "
        f"entry ({shown}); use {ROLL_FORMS}"
    )


def join_parcels(
    layer: DetectionLayer,
    parcels: gpd.GeoDataFrame,
    *,
    id_field: str | None = None,
    roll_field: str | None = None,
    min_area: float = 0.0,
    classes: Sequence[str] | None = None,
    min_covered: float = MIN_COVERED,
) -> ParcelJoin:
    """Pools per parcel and, with ``roll_field``, where the roll disagrees.

    Args:
        layer: detections and their coverage (:func:`~geodetect.county.read_detections`).
        parcels: polygons in any CRS (reprojected, never assumed).
        id_field: the parcel id (checked to exist; listed in the summary's review list).
        roll_field: the roll's pools per parcel, in one of :data:`ROLL_FORMS`.
        min_area: pools smaller than this (square metres) are ignored (e.g. 10 where only
            pools over 10 m2 are taxed).
        classes: the detection classes that count (default: all).
        min_covered: share of a parcel that must have been looked at for "no pool" to
            mean no pool.

    Statuses, with a roll: ``new`` (more pools found than the roll lists: the review
    list), ``missing`` (fewer found than listed, the parcel looked at), ``agrees``, and
    ``not_covered`` (less than ``min_covered`` of the parcel looked at, and nothing
    found that the roll lacks). Without a roll: ``pool``, ``no_pool``, ``not_covered``.
    A yes/no roll compares presence; a count roll compares counts.
    """
    require_coverage(layer)
    source = layer_name(parcels, "parcels")
    require_field(parcels, id_field, "--id-field")
    require_field(parcels, roll_field, "--roll-field")
    if not math.isfinite(min_area) or min_area < 0:
        raise InputError(f"--min-area {min_area}: give a non-negative area in square metres")
    kept, report = repair_geometries(parcels)
    if report.dropped:
        log.warning("%s: %d parcel(s) without a polygon are left out", source, report.dropped)
    if id_field is not None:
        _require_unique(kept[id_field], source, id_field)
    roll = is_count = None
    if roll_field is not None:
        roll, is_count = parse_roll(kept[roll_field], source=source, field_name=roll_field)

    work = work_crs(layer.detections)
    pools = layer.detections
    if classes is not None:
        pools = pools[pools["class"].isin(list(classes))] if "class" in pools else pools
    small = pools["area_m2"].to_numpy(dtype=np.float64) < min_area
    pools = to_crs_checked(pools[~small], work)
    shapes = to_crs_checked(kept, work).geometry.to_numpy()
    covered = layer.coverage.to_crs(work).geometry.union_all()

    owner = _owners(pools.geometry.to_numpy(), shapes)
    inside = owner >= 0
    n = len(kept)
    found = np.bincount(owner[inside], minlength=n)
    water = np.bincount(owner[inside], weights=pools["area_m2"].to_numpy()[inside], minlength=n)
    best = np.full(n, np.nan)
    np.fmax.at(best, owner[inside], pools["score"].to_numpy(dtype=np.float64)[inside])
    share = share_inside(shapes, covered)
    looked = share >= min_covered

    if roll is None:
        status = np.where(found > 0, "pool", np.where(looked, "no_pool", "not_covered"))
        order = WITHOUT_ROLL
    else:
        seen = found if is_count else (found > 0).astype(np.int64)
        listed = roll if is_count else (roll > 0).astype(np.int64)
        status = np.select(
            [seen > listed, (seen == listed) & (looked | (seen > 0)), (seen < listed) & looked],
            ["new", "agrees", "missing"],
            "not_covered",
        )
        order = WITH_ROLL
    out = _clear_names(kept.copy(), source)
    out["pools"] = found.astype(np.int64)
    out["water_m2"] = water.round(1)
    out["best_score"] = np.round(best, 4)
    out["covered"] = share.round(3)
    if roll is not None:
        out["roll_pools"] = roll
    out["status"] = status
    rank = pd.Series(status).map({s: i for i, s in enumerate(order)}).to_numpy()
    score_key = np.where(status == "new", -np.nan_to_num(best, nan=0.0), 0.0)
    out = out.iloc[np.lexsort((np.arange(n), score_key, rank))]
    out.attrs = dict(parcels.attrs)

    summary = {
        "parcels": n,
        "status": {s: int((status == s).sum()) for s in order},
        "pools": int(inside.sum()),
        "pools_outside_parcels": int((~inside).sum()),
        "pools_below_min_area": int(small.sum()),
        "min_area_m2": min_area,
        "parcels_without_polygon": report.dropped,
        "roll": None if roll is None else ("count" if is_count else "yes/no"),
    }
    if id_field is not None:
        new = out.index[out["status"].to_numpy() == "new"][:20]
        summary["new"] = [_plain(v) for v in kept.loc[new, id_field]]
    return ParcelJoin(out, summary)


def _require_unique(ids: pd.Series, source: str, id_field: str) -> None:
    """LabelError unless each id names one feature: a parcel in two parts would be
    judged against the roll twice, and one part reported missing the other's pool."""
    repeated = ids[ids.notna() & ids.duplicated(keep=False)]
    if len(repeated):
        values = pd.unique(repeated)
        shown = ", ".join(repr(_plain(v)) for v in values[:3])
        raise LabelError(
            f"{source}: --id-field {id_field!r} names {len(values)} parcel(s) on several "
            f"features ({shown}); merge each parcel's parts into one feature (e.g. QGIS "
            "Dissolve by that field) or give a field that is unique"
        )


# The fields join_parcels adds, whose names styles and users rely on.
ADDED_FIELDS = ("pools", "water_m2", "best_score", "covered", "roll_pools", "status")


def _clear_names(parcels: gpd.GeoDataFrame, source: str) -> gpd.GeoDataFrame:
    """Parcel fields named like an added one (case aside: GeoPackage and Shapefile
    fields are case-insensitive) get a ``_parcel`` suffix."""
    taken = {c.lower() for c in parcels.columns}
    renames = {}
    for column in parcels.columns:
        if column != parcels.geometry.name and column.lower() in ADDED_FIELDS:
            new = f"{column}_parcel"
            while new.lower() in taken:
                new += "_"
            taken.add(new.lower())
            renames[column] = new
    if renames:
        said = ", ".join(f"{a} -> {b}" for a, b in renames.items())
        log.info("%s: fields renamed beside the ones geodetect adds: %s", source, said)
    return parcels.rename(columns=renames)


def _owners(pools: np.ndarray, parcels: np.ndarray) -> np.ndarray:
    """For each pool, the parcel holding the larger part of it (-1: none)."""
    owner = np.full(len(pools), -1, dtype=np.int64)
    if not len(pools) or not len(parcels):
        return owner
    pool_i, parcel_i = shapely.STRtree(parcels).query(pools, predicate="intersects")
    if not len(pool_i):
        return owner
    area = shapely.area(shapely.intersection(pools[pool_i], parcels[parcel_i]))
    order = np.lexsort((parcel_i, -area, pool_i))  # per pool: largest share, then lowest
    pool_i, parcel_i, area = pool_i[order], parcel_i[order], area[order]
    first = np.ones(len(pool_i), dtype=bool)
    first[1:] = pool_i[1:] != pool_i[:-1]
    chosen = first & (area > 0)
    owner[pool_i[chosen]] = parcel_i[chosen]
    return owner


def parcel_of(
    layer: gpd.GeoDataFrame, parcels: gpd.GeoDataFrame, id_field: str | None = None
) -> np.ndarray:
    """For each feature of ``layer``, the parcel holding the larger part of it: its
    ``id_field`` value, or its row number; None outside every parcel."""
    require_field(parcels, id_field, "--id-field")
    kept, _ = repair_geometries(parcels)
    shapes = to_crs_checked(kept, layer.crs).geometry.to_numpy()
    owner = _owners(layer.geometry.to_numpy(), shapes)
    ids = kept[id_field].to_numpy() if id_field else np.arange(len(kept))
    out = np.full(len(layer), None, dtype=object)
    out[owner >= 0] = [_plain(v) for v in ids[owner[owner >= 0]]]
    return out


def _plain(value):
    return value.item() if hasattr(value, "item") else value
