"""A synthetic county with known answers: two flights over one suburb whose pools
changed between them, the parcels, and a tax roll with planted errors.

- ``old/`` and ``new/``: the same layout (seed) flown twice. Pools numbered in
  ``added`` are missing from the old flight (built since), those in ``removed`` from the
  new one (filled in), those in ``shrunk`` are smaller in the new one; the new flight's
  georeferencing is off by ``shift`` metres (x, y), as flights are.
- ``parcels.gpkg``: layer ``parcels`` (``APN``, ``HAS_POOL`` yes/no, the roll as of the
  old flight) with planted errors: parcels with a pool the roll lacks (``undeclared``),
  parcels the roll lists with a pool that has none (``demolished``), and a row of parcels
  beyond the imagery (``outside``); layer ``truth`` gives each parcel's true pools, its
  planted error and the status `geodetect parcels` must give with perfect detections.
- ``county.json``: the shift and the pool numbers of each change.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely
from affine import Affine

from geodetect.synth.objects import Vintage
from geodetect.synth.write import (
    SynthScene,
    _check_args,
    _check_crs,
    _default_origin,
    _snap,
    _to_map,
    layout,
    synth_scene,
)

PARCELS_NAME = "parcels.gpkg"
COUNTY_NAME = "county.json"
# Shares of the layout's pools that change between the flights.
ADDED, REMOVED, SHRUNK = 0.08, 0.08, 0.05
# Shares of parcels given a planted roll error.
UNDECLARED, DEMOLISHED = 0.12, 0.05
OUTSIDE = 6  # parcels beyond the imagery
MIN_COVERED = 0.95  # as geodetect parcels counts a parcel looked at


@dataclass(frozen=True)
class SynthCounty:
    old: SynthScene
    new: SynthScene
    parcels_path: Path
    county_path: Path
    shift: tuple[float, float]
    added: frozenset[int]
    removed: frozenset[int]
    shrunk: frozenset[int]


def synth_county(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    size: tuple[int, int] = (2500, 2500),
    gsd: float = 0.3,
    tiles: int = 1,
    crs: str = "EPSG:32617",
    compress: str = "deflate",
    shift: tuple[float, float] = (1.5, -0.7),
    overwrite: bool = False,
) -> SynthCounty:
    """Write a synthetic county (see the module's docstring) into ``out_dir``."""
    width, height = _check_args(seed, size, gsd, tiles, compress, None)
    proj, unit_m = _check_crs(crs)
    out_dir = Path(out_dir)
    step = gsd / unit_m
    x0, y0 = (_snap(v, step) for v in _default_origin(proj, int(seed), unit_m))
    transform = Affine(step, 0.0, x0, 0.0, -step, y0)

    base = layout(seed, width, height, gsd)
    n = len(base.draw.placed)
    order = np.random.default_rng([int(seed), 7]).permutation(n)
    k_add, k_rem, k_shr = (max(1, round(share * n)) for share in (ADDED, REMOVED, SHRUNK))
    added = frozenset(int(i) for i in order[:k_add])
    removed = frozenset(int(i) for i in order[k_add : k_add + k_rem])
    shrunk = frozenset(int(i) for i in order[k_add + k_rem : k_add + k_rem + k_shr])
    common = {"seed": seed, "size": size, "gsd": gsd, "tiles": tiles, "crs": crs,
              "compress": compress, "overwrite": overwrite}  # fmt: skip
    old = synth_scene(out_dir / "old", origin=(x0, y0), vintage=Vintage(absent=added), **common)
    new = synth_scene(
        out_dir / "new",
        origin=(x0 + shift[0] / unit_m, y0 + shift[1] / unit_m),
        vintage=Vintage(absent=removed, shrunk=shrunk),
        **common,
    )
    parcels_path = out_dir / PARCELS_NAME
    if parcels_path.exists():
        parcels_path.unlink()
    _write_parcels(parcels_path, base, added, transform, old.crs, seed, width, height)
    county_path = out_dir / COUNTY_NAME
    county_path.write_text(
        json.dumps(
            {
                "shift_m": list(shift),
                "added": sorted(added),
                "removed": sorted(removed),
                "shrunk": sorted(shrunk),
                "pools_old": old.n_pools,
                "pools_new": new.n_pools,
            },
            indent=2,
        )
    )
    return SynthCounty(old, new, parcels_path, county_path, shift, added, removed, shrunk)


def _write_parcels(path, base, added, transform, crs, seed, width, height) -> None:
    rng = np.random.default_rng([int(seed), 8])
    shapes = [shape for shape, _ in base.parcels]
    pools = [[i for i in ids if i not in added] for _, ids in base.parcels]
    true_pools = np.array([len(p) for p in pools])
    scene = shapely.box(0, 0, width, height)
    covered = np.array([s.intersection(scene).area / s.area for s in shapes])
    # A row of parcels east of the imagery, half of them on the roll with a pool.
    side = 30.0 / base.gsd
    for i in range(OUTSIDE):
        shapes.append(shapely.box(width + 5, i * side, width + 5 + side, (i + 1) * side))
    n_in = len(true_pools)
    true_pools = np.concatenate([true_pools, np.zeros(OUTSIDE, dtype=int)])
    covered = np.concatenate([covered, np.zeros(OUTSIDE)])
    roll = true_pools.copy()
    planted = np.full(len(shapes), "", dtype=object)
    looked = covered >= MIN_COVERED
    with_pool = np.flatnonzero((true_pools > 0) & looked)
    without = np.flatnonzero((true_pools == 0) & looked)
    undeclared = rng.choice(with_pool, max(1, round(UNDECLARED * len(with_pool))), replace=False)
    demolished = rng.choice(without, max(1, round(DEMOLISHED * len(without))), replace=False)
    roll[undeclared] = 0
    roll[demolished] = 1
    planted[undeclared] = "undeclared"
    planted[demolished] = "demolished"
    outside = np.arange(n_in, len(shapes))
    roll[outside[::2]] = 1
    planted[outside] = "outside"
    # What `geodetect parcels --roll-field HAS_POOL` must say with perfect detections.
    seen, listed = (true_pools > 0).astype(int), (roll > 0).astype(int)
    status = np.select(
        [seen > listed, (seen == listed) & (looked | (seen > 0)), (seen < listed) & looked],
        ["new", "agrees", "missing"],
        "not_covered",
    )
    ids = [f"{seed:02d}-{i:05d}" for i in range(len(shapes))]
    geometry = gpd.GeoSeries(_to_map(shapes, transform), crs=crs)
    parcels = gpd.GeoDataFrame(
        {"APN": ids, "HAS_POOL": np.where(roll > 0, "yes", "no")}, geometry=geometry
    )
    truth = gpd.GeoDataFrame(
        {
            "APN": ids,
            "true_pools": true_pools,
            "planted": planted.astype(str),
            "expected": status,
        },
        geometry=geometry,
    )
    parcels.to_file(path, layer="parcels", driver="GPKG", engine="pyogrio")
    truth.to_file(path, layer="truth", driver="GPKG", engine="pyogrio")
