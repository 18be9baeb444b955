"""A filled review read back (:func:`read_review`): its verdicts and done squares, and
what it teaches a detector (:func:`review_labels`, for ``geodetect train --review``).
The review GeoPackage's layers and the values a reviewer may type are defined here, once;
``county/review.py`` draws the sample and writes it.

In QGIS the reviewer fills ``verdict`` (``pool`` / ``not_pool``) and, for rejections,
``reason`` (``tarp``, ``solar``, ``above_ground``, ``other``) in the ``review`` layer,
draws each pool the layer missed in a search square into ``missed``, then sets the
square's ``done`` to ``yes`` in ``squares``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd

from geodetect.errors import InputError

VERDICTS = ("pool", "not_pool")
REASONS = ("tarp", "solar", "above_ground", "other")
# What a reviewer may type in QGIS: verdicts and a square's ``done``.
_POOL = {"pool", "p", "yes", "y", "true", "1"}
_NOT_POOL = {"not_pool", "not pool", "notpool", "no", "n", "false", "0"}
_DONE = {"yes", "y", "true", "1", "done", "x"}
REVIEW_LAYERS = ("review", "squares", "missed", "strata")


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
