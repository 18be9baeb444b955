"""Procedural suburban orthomosaics with known pools, for training, tests and demos.

`synth_scene` lays out a suburb in metres (roads, parcels, houses, yards, pools, trees
and the things a detector mistakes for pools), renders it block by block into RGB
GeoTIFFs on one pixel grid and writes the true pool outlines to ``truth.gpkg``.

The result is a pure function of the arguments: every texture is a hash of absolute
pixel coordinates and the seed, so a scene cut into tiles has exactly the pixels of the
same scene written as one file.
"""

from __future__ import annotations

import logging
import math
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from affine import Affine
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from pyproj.exceptions import CRSError
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.features import rasterize
from rasterio.windows import Window
from shapely import affinity
from shapely.geometry import Point, Polygon, box
from shapely.geometry.polygon import orient
from shapely.prepared import prep

from geodetect.errors import InputError, OutputError

log = logging.getLogger(__name__)

POOL_LAYER = "pools"
DISTRACTOR_LAYER = "distractors"
TRUTH_NAME = "truth.gpkg"
DISTRACTORS_NAME = "distractors.gpkg"
CONDITIONS = ("clean", "green", "covered")
POOL_SHAPES = ("rectangular", "oval", "kidney", "l_shaped", "round")
DISTRACTOR_KINDS = ("tarp", "roof", "car", "pond", "shadow", "trampoline")
MAX_OCCLUSION = 0.4  # at least 60 % of every pool stays visible
POOL_SIDE_M = (3.0, 14.0)  # longest side of a pool, metres

# Cape Coral, Florida: flat, gridded and full of backyard pools.
_ANCHOR_LONLAT = (-81.95, 26.60)
_SEED_CELL_M = 10_000.0  # different seeds land in different 10 km cells
_MAX_PIXELS = 20_000 * 20_000  # the layout (not the pixels) scales with the area
_RENDER_BLOCK = 1024  # pixels per side of one render window (bounds memory)
_HALO = 2  # pixels rendered around a window so the blur has real neighbours
_BLUR = np.array([0.054, 0.244, 0.404, 0.244, 0.054], dtype=np.float32)  # sigma ~0.8 px

# Noise fields every painted object can mix in, with their octaves (metres, weight).
_FIELD_OCTAVES = (
    ((7.0, 0.6), (3.0, 0.3), (1.4, 0.1)),  # coarse: lawn wear, soil, asphalt patches
    ((1.4, 0.65), (0.7, 0.35)),  # medium: leaf clumps, tarp wrinkles
    ((0.45, 1.0),),  # fine: shingles, gravel, grain
    ((1.1, 1.0),),  # ripple: turned into caustic lines on water
)
# Every `texture` below is a tuple of amplitudes for these four: (coarse, medium, fine, ripple).
_RIPPLE = 3
_N_FIELDS = len(_FIELD_OCTAVES)
_ILLUMINATION_M = 150.0  # scale of the gentle brightness drift across the scene
_NO_GRADIENT = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)

# Paint order inside the ground pass (later covers earlier).
_Z_BASE, _Z_LAWN, _Z_SOIL, _Z_WALK, _Z_ROAD, _Z_PAVING, _Z_POND_EDGE, _Z_POND = range(8)
_Z_RIM, _Z_WATER, _Z_TILE, _Z_COVER, _Z_TARP, _Z_TRAMPOLINE, _Z_CAR, _Z_GLASS = range(8, 16)

_SHADOW = (0.40, 0.43, 0.50)  # per-channel factor: shadows are dark and slightly blue
_TREE_SHADOW = (0.50, 0.53, 0.60)  # canopies leak some light
_SCREEN = (0.80, 0.80, 0.82)  # a pool's screen enclosure dims what is under it

_ROOF_COLOURS = (
    ((108, 106, 104), 0.22),  # grey shingle
    ((78, 78, 82), 0.12),  # dark shingle
    ((120, 98, 82), 0.12),  # brown shingle
    ((172, 104, 74), 0.14),  # terracotta barrel tile
    ((196, 172, 140), 0.12),  # beige tile
    ((208, 206, 200), 0.14),  # white / light concrete tile
    ((160, 160, 158), 0.08),  # metal
    ((150, 132, 112), 0.06),  # tan shingle
)
_BLUE_ROOFS = ((70, 104, 150), (58, 124, 132), (92, 132, 170), (48, 84, 128))
_CAR_COLOURS = (
    ((226, 226, 222), 0.24),
    ((172, 174, 176), 0.17),
    ((32, 32, 35), 0.18),
    ((100, 102, 106), 0.14),
    ((158, 32, 30), 0.08),
    ((36, 70, 160), 0.10),
    ((26, 38, 86), 0.03),
    ((42, 82, 54), 0.02),
    ((192, 176, 140), 0.04),
)
_BLUE_CARS = {5, 6}  # indices into _CAR_COLOURS a detector may read as water
_COVER_COLOURS = ((38, 62, 112), (52, 92, 62), (58, 58, 60), (150, 150, 142))
_PAVING_COLOURS = ((192, 189, 180), (204, 188, 160), (214, 204, 184), (172, 126, 100))


@dataclass(frozen=True)
class SynthScene:
    """What `synth_scene` wrote.

    Attributes:
        image_paths: the GeoTIFF(s): ``[scene.tif]``, or the K×K tiles row by row.
        truth_path: ``truth.gpkg``, one layer ``pools`` (the ground truth).
        distractors_path: ``distractors.gpkg``, one layer ``distractors``.
        crs: the scene CRS as a string (``"EPSG:32617"``).
        gsd: ground sample distance in metres per pixel.
        width: width of the whole scene (all tiles) in pixels.
        height: height of the whole scene (all tiles) in pixels.
        n_pools: pools in the truth layer.
        n_distractors: features in the distractors layer.
        transform: affine transform of the whole scene (pixel edge -> map), north up.
    """

    image_paths: list[Path]
    truth_path: Path
    distractors_path: Path
    crs: str
    gsd: float
    width: int
    height: int
    n_pools: int
    n_distractors: int
    transform: Affine


# --------------------------------------------------------------------------- textures


def _hash01(i: np.ndarray, j: np.ndarray, salt: int) -> np.ndarray:
    """Uniform [0, 1) float32 from integer lattice coordinates; same cell, same value."""
    h = (np.asarray(i, np.int64) + (1 << 24)).astype(np.uint64) * np.uint64(0x9E3779B1)
    h = h ^ ((np.asarray(j, np.int64) + (1 << 24)).astype(np.uint64) * np.uint64(0x85EBCA77))
    h = (h ^ np.uint64((salt * 0xC2B2AE3D) & 0xFFFFFFFF)) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(15)
    h = (h * np.uint64(0x2C1B3C6D)) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(12)
    h = (h * np.uint64(0x297A2D39)) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(15)
    return (h >> np.uint64(8)).astype(np.float32) / np.float32(1 << 24)


def _axis_weights(start: int, n: int, scale: float) -> tuple[np.ndarray, int, int]:
    """Smoothstep interpolation weights [n, m] from m lattice nodes to n pixel centres."""
    u = (np.arange(start, start + n, dtype=np.float64) + 0.5) / scale
    cell = np.floor(u)
    frac = u - cell
    s = (frac * frac * (3.0 - 2.0 * frac)).astype(np.float32)
    cell = cell.astype(np.int64)
    first = int(cell[0])
    m = int(cell[-1]) - first + 2
    weights = np.zeros((n, m), dtype=np.float32)
    k = np.arange(n)
    weights[k, cell - first] = 1.0 - s
    weights[k, cell - first + 1] = s
    return weights, first, m


def _value_noise(row0: int, col0: int, height: int, width: int, scale: float, salt: int):
    """Smooth value noise in [-1, 1] with features ``scale`` pixels apart, float32 [h, w]."""
    wr, r_first, mr = _axis_weights(row0, height, scale)
    wc, c_first, mc = _axis_weights(col0, width, scale)
    lattice = (
        _hash01(
            np.arange(r_first, r_first + mr)[:, None],
            np.arange(c_first, c_first + mc)[None, :],
            salt,
        )
        * 2.0
        - 1.0
    )
    return (wr @ lattice) @ wc.T


class _Textures:
    """Deterministic noise over absolute pixel coordinates, at scales set in metres."""

    def __init__(self, seed: int, gsd: float) -> None:
        self.seed = seed
        self.octaves = [[(max(m / gsd, 1.0), w) for m, w in field] for field in _FIELD_OCTAVES]
        self.illumination_scale = max(_ILLUMINATION_M / gsd, 1.0)
        rng = np.random.default_rng([seed, 7])
        period = 509  # white sensor noise repeats every 509 px: invisible, and cheap
        self.sensor = rng.normal(0.0, 1.0, size=(period, period, 4)).astype(np.float32)

    def _salt(self, k: int) -> int:
        return (self.seed * 1_000_003 + k * 7919) & 0xFFFFFFFF

    def fields(self, row0: int, col0: int, height: int, width: int) -> np.ndarray:
        """float32 [F, h, w]: the noise fields for a window, roughly in [-1, 1]."""
        out = np.zeros((_N_FIELDS, height, width), dtype=np.float32)
        for f, octaves in enumerate(self.octaves):
            for o, (scale, weight) in enumerate(octaves):
                out[f] += weight * _value_noise(
                    row0, col0, height, width, scale, self._salt(10 * f + o)
                )
        # Caustics: bright thin lines where the ripple noise crosses zero.
        out[_RIPPLE] = np.clip(1.0 - 4.0 * np.abs(out[_RIPPLE]), 0.0, 1.0)
        return out

    def illumination(self, row0: int, col0: int, height: int, width: int) -> np.ndarray:
        return _value_noise(row0, col0, height, width, self.illumination_scale, self._salt(99))

    def sensor_noise(self, row0: int, col0: int, height: int, width: int) -> np.ndarray:
        """float32 [h, w, 3]: unit white noise, one shared luminance part plus colour."""
        p = self.sensor.shape[0]
        rows = np.arange(row0, row0 + height) % p
        cols = np.arange(col0, col0 + width) % p
        block = self.sensor[rows[:, None], cols[None, :]]
        return 0.8 * block[..., :1] + 0.6 * block[..., 1:]


# --------------------------------------------------------------------------- render passes


@dataclass(frozen=True)
class _Pass:
    """Objects drawn together; a later object covers an earlier one where they overlap.

    ``rgb`` is a colour (0-255) for paint passes and a per-channel factor for shade
    passes. ``gradient`` rows are ``cx, cy, ux, uy, half_len, linear, dome`` in scene
    pixels: brightness ``1 + linear * t + dome * (0.5 - r^2)`` with ``t`` the position
    along ``(ux, uy)`` and ``r`` the distance from the centre, both over ``half_len``.
    """

    shade: bool
    geoms: np.ndarray  # object [N]: shapely polygons in scene pixel coordinates
    rgb: np.ndarray  # float32 [N, 3]
    texture: np.ndarray  # float32 [N, F]: amplitude of each noise field
    gradient: np.ndarray  # float32 [N, 7]
    has_gradient: np.ndarray  # bool [N]
    tree: shapely.STRtree

    def object_ids(self, row0: int, col0: int, height: int, width: int) -> np.ndarray | None:
        """int32 [h, w]: index of the object covering each pixel centre, -1 for none."""
        hits = self.tree.query(box(col0, row0, col0 + width, row0 + height))
        if len(hits) == 0:
            return None
        hits = np.sort(hits)
        ids = rasterize(
            zip(self.geoms[hits], (hits + 1).tolist(), strict=True),
            out_shape=(height, width),
            transform=Affine.translation(col0, row0),
            fill=0,
            dtype="int32",
        )
        return ids - 1


class _PassBuilder:
    def __init__(self, *, shade: bool = False) -> None:
        self.shade = shade
        self.items: list[tuple] = []

    def add(self, geom, rgb, *, z: int = 0, texture=(0.0, 0.0, 0.0, 0.0), gradient=None):
        if geom is None or geom.is_empty or geom.area <= 0:
            return
        self.items.append((z, len(self.items), geom, rgb, texture, gradient or _NO_GRADIENT))

    def freeze(self) -> _Pass:
        items = sorted(self.items, key=lambda item: (item[0], item[1]))
        geoms = np.empty(len(items), dtype=object)
        geoms[:] = [item[2] for item in items]
        gradient = np.array([item[5] for item in items], dtype=np.float32).reshape(-1, 7)
        return _Pass(
            shade=self.shade,
            geoms=geoms,
            rgb=np.array([item[3] for item in items], dtype=np.float32).reshape(-1, 3),
            texture=np.array([item[4] for item in items], dtype=np.float32).reshape(-1, _N_FIELDS),
            gradient=gradient,
            has_gradient=np.any(gradient[:, 5:] != 0, axis=1),
            tree=shapely.STRtree(geoms),
        )


# --------------------------------------------------------------------------- shapes


def _apply(geom, frame: Affine):
    """A geometry in some local frame, moved to the frame's target (usually scene pixels)."""
    return affinity.affine_transform(geom, (frame.a, frame.b, frame.d, frame.e, frame.c, frame.f))


def _direction(frame: Affine, dx: float, dy: float) -> tuple[float, float]:
    """Unit vector of a local direction after the frame's linear part."""
    x, y = frame.a * dx + frame.b * dy, frame.d * dx + frame.e * dy
    n = math.hypot(x, y) or 1.0
    return x / n, y / n


def _largest(geom):
    """The biggest polygon of a (multi)polygon, so every feature is a plain Polygon."""
    if geom.geom_type == "Polygon":
        return geom
    parts = [g for g in getattr(geom, "geoms", []) if g.geom_type == "Polygon"]
    return max(parts, key=lambda g: g.area) if parts else Polygon()


def _blob(
    rng: np.random.Generator,
    radius: float,
    *,
    rough: float = 0.08,
    stretch: float = 1.0,
    n: int = 28,
) -> Polygon:
    """An irregular round outline centred on (0, 0): canopies, ponds, soil patches."""
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    r = np.ones(n)
    for k in range(2, 7):
        r += rng.uniform(0.0, rough) * np.cos(k * t + rng.uniform(0, 2 * np.pi)) * (3 / k)
    r = radius * np.clip(r, 0.5, 1.6)
    return shapely.make_valid(Polygon(np.column_stack([stretch * r * np.cos(t), r * np.sin(t)])))


def _palm(rng: np.random.Generator, radius: float) -> Polygon:
    """A star of fronds: a palm crown seen from above."""
    fronds = int(rng.integers(8, 13))
    t = np.linspace(0.0, 2.0 * np.pi, 2 * fronds, endpoint=False) + rng.uniform(0, np.pi)
    r = np.where(np.arange(2 * fronds) % 2 == 0, 1.0, 0.42) * radius
    r = r * rng.uniform(0.85, 1.1, size=r.shape)
    return Polygon(np.column_stack([r * np.cos(t), r * np.sin(t)]))


def _pool_outline(rng: np.random.Generator, shape: str, cap: float) -> Polygon | None:
    """A pool outline centred on (0, 0), long axis along x, longest side <= cap metres."""
    lo, hi = POOL_SIDE_M
    if shape == "round":
        d = rng.uniform(lo + 0.1, min(8.0, cap)) if cap >= lo + 0.1 else None
        return None if d is None else Point(0, 0).buffer(d / 2, quad_segs=16)
    low = {"rectangular": 6.0, "oval": 5.0, "kidney": 6.0, "l_shaped": 7.0}[shape]
    low = min(low, cap)
    if low < lo + 1.0:
        return None
    length = rng.uniform(low, min(hi - 0.2, cap))
    if shape == "rectangular":
        width = max(lo, length * rng.uniform(0.4, 0.6))
        outline = box(-length / 2, -width / 2, length / 2, width / 2)
    elif shape == "oval":
        width = max(lo, length * rng.uniform(0.45, 0.65))
        outline = affinity.scale(Point(0, 0).buffer(1.0, quad_segs=16), length / 2, width / 2)
    elif shape == "kidney":
        width = max(lo, length * rng.uniform(0.5, 0.62))
        r1, r2 = width / 2, width / 2 * rng.uniform(0.68, 0.88)
        lobes = shapely.union(
            Point(-length / 2 + r1, 0).buffer(r1, quad_segs=16),
            Point(length / 2 - r2, r2 - r1).buffer(r2, quad_segs=16),
        )
        bite_r = width * rng.uniform(0.3, 0.42)
        bite = Point(rng.uniform(-0.08, 0.08) * length, width / 2 + bite_r * 0.25).buffer(bite_r)
        outline = lobes.convex_hull.difference(bite)
        outline = outline.buffer(0.5).buffer(-0.5)
    else:  # l_shaped
        arm = rng.uniform(3.2, 5.0)
        leg_w = rng.uniform(3.0, 4.5)
        leg_l = rng.uniform(arm + 2.0, max(arm + 2.1, min(length * 0.8, 9.0)))
        outline = shapely.union(box(0, 0, length, arm), box(0, 0, leg_w, leg_l))
        outline = outline.buffer(-0.25, join_style="round").buffer(0.25, join_style="round")
    outline = _largest(shapely.make_valid(outline))
    minx, miny, maxx, maxy = outline.bounds
    return affinity.translate(outline, -(minx + maxx) / 2, -(miny + maxy) / 2)


def _longest_side(geom) -> float:
    """Longest side of the minimum rotated rectangle around a geometry."""
    rect = np.asarray(shapely.minimum_rotated_rectangle(geom).exterior.coords)
    return float(np.max(np.hypot(*np.diff(rect, axis=0).T)))


def _roof_facets(x0: float, y0: float, x1: float, y1: float, style: str):
    """Facets of a roof over an axis-aligned rectangle: (polygon, outward dx, dy)."""
    if style == "flat":
        return [(box(x0, y0, x1, y1), 0.0, 0.0)]
    transpose = (x1 - x0) < (y1 - y0)
    if transpose:  # build along x, then swap axes back
        x0, y0, x1, y1 = y0, x0, y1, x1
    ym = (y0 + y1) / 2
    if style == "gable":
        facets = [(box(x0, y0, x1, ym), 0.0, -1.0), (box(x0, ym, x1, y1), 0.0, 1.0)]
    else:  # hip
        r = min((y1 - y0) / 2, (x1 - x0) / 2)
        facets = [
            (Polygon([(x0, y0), (x1, y0), (x1 - r, ym), (x0 + r, ym)]), 0.0, -1.0),
            (Polygon([(x0, y1), (x1, y1), (x1 - r, ym), (x0 + r, ym)]), 0.0, 1.0),
            (Polygon([(x0, y0), (x0 + r, ym), (x0, y1)]), -1.0, 0.0),
            (Polygon([(x1, y0), (x1 - r, ym), (x1, y1)]), 1.0, 0.0),
        ]
    if transpose:
        facets = [
            (affinity.affine_transform(p, (0, 1, 1, 0, 0, 0)), dy, dx) for p, dx, dy in facets
        ]
    return facets


# --------------------------------------------------------------------------- layout


@dataclass
class _Tree:
    canopy: Polygon  # scene pixels
    shadow: Polygon
    rgb: tuple
    texture: tuple
    gradient: tuple


@dataclass
class _Pool:
    outline: Polygon  # scene pixels
    condition: str
    shape: str


class _Suburb:
    """Lays a suburb out in metres and collects what to draw, pass by pass, in pixels."""

    def __init__(self, rng: np.random.Generator, width: int, height: int, gsd: float) -> None:
        self.rng = rng
        self.gsd = gsd
        self.width, self.height = width, height
        angle = float(rng.uniform(-20, 20)) if rng.random() < 0.7 else 0.0
        # Street frame: metres, centred on the scene, axes along the road grid.
        self.street_to_px = (
            Affine.translation(width / 2, height / 2)
            @ Affine.rotation(angle)
            @ Affine.scale(1 / gsd)
        )
        azimuth = math.radians(rng.uniform(-60, 60))  # shadows fall roughly north
        self.shadow_dir = np.array([math.sin(azimuth), -math.cos(azimuth)])
        self.sun = (-self.shadow_dir[0], -self.shadow_dir[1])
        self.shadow_per_m = rng.uniform(0.25, 0.6) / gsd  # shadow length per metre of height
        self.scene_px = box(0, 0, width, height)
        self.scene_street = prep(_apply(self.scene_px, ~self.street_to_px).buffer(25.0))
        self.lawn = np.array([rng.uniform(90, 106), rng.uniform(104, 120), rng.uniform(64, 78)])
        self.pool_rate = rng.uniform(0.40, 0.52)
        self.ground = _PassBuilder()
        self.shadows = _PassBuilder(shade=True)
        self.roofs = _PassBuilder()
        self.tree_shadows = _PassBuilder(shade=True)
        self.canopies = _PassBuilder()
        self.pools: list[_Pool] = []
        self.trees: list[_Tree] = []
        self.distractors: list[tuple[Polygon, str]] = []

    # ---- small helpers
    def jitter(self, rgb, amount: float = 0.06) -> tuple[float, float, float]:
        base = np.asarray(rgb, dtype=float) * self.rng.uniform(1 - amount, 1 + amount)
        base *= self.rng.uniform(1 - amount / 3, 1 + amount / 3, size=3)
        return tuple(np.clip(base, 0, 255))

    def pick(self, table):
        weights = np.array([w for _, w in table], dtype=float)
        k = int(self.rng.choice(len(table), p=weights / weights.sum()))
        return k, table[k][0]

    def cast(self, geom_px, height_m: float, *, hull: bool = True):
        """The shadow a solid of this footprint and height throws on flat ground."""
        v = self.shadow_dir * height_m * self.shadow_per_m
        if not hull:
            return affinity.translate(geom_px, v[0], v[1])
        xy = shapely.get_coordinates(geom_px)
        return shapely.multipoints(np.vstack([xy, xy + v])).convex_hull

    def distractor(self, geom_px, kind: str) -> None:
        clipped = _largest(shapely.intersection(geom_px, self.scene_px))
        if not clipped.is_empty and clipped.area * self.gsd**2 > 0.5:
            self.distractors.append((clipped, kind))

    def visible(self, street_geom) -> bool:
        return self.scene_street.intersects(street_geom)

    # ---- the street grid
    def build(self) -> None:
        rng = self.rng
        corners = shapely.get_coordinates(_apply(self.scene_px, ~self.street_to_px))
        half_x, half_y = np.abs(corners).max(axis=0) + 60.0
        road_w = rng.uniform(7.0, 9.0)
        verge = rng.uniform(1.2, 3.0)
        walk = 1.5 if rng.random() < 0.7 else 0.0
        setback = road_w / 2 + verge + walk + 0.6  # road centre line to parcel front
        asphalt = np.full(3, rng.uniform(84, 108)) * (1.0, 1.0, 0.97)
        road_tex = (0.10, 0.0, 0.07, 0.0)
        self.ground.add(
            _apply(box(-half_x - 80, -half_y - 80, half_x + 80, half_y + 80), self.street_to_px),
            self.jitter(self.lawn * 0.97, 0.03),
            z=_Z_BASE,
            texture=(0.1, 0.08, 0.04, 0),
        )
        v = -half_y - rng.uniform(0, 80)
        while v < half_y:
            depths = rng.uniform(31.0, 42.0, size=2)
            v_next = v + 2 * setback + depths.sum()
            self.road(
                box(-half_x - 80, v - road_w / 2, half_x + 80, v + road_w / 2),
                asphalt,
                road_tex,
                along=(1.0, 0.0),
                lane=road_w / 2 - 1.3,
            )
            u = -half_x - rng.uniform(0, 250)
            while u < half_x:
                length = rng.uniform(110.0, 260.0)
                u_next = u + 2 * setback + length
                self.road(
                    box(u - road_w / 2, v, u + road_w / 2, v_next),
                    asphalt,
                    road_tex,
                    along=(0.0, 1.0),
                    lane=road_w / 2 - 1.3,
                )
                block = box(u + setback, v + setback, u_next - setback, v_next - setback)
                if self.visible(block):
                    if walk:
                        ring = block.buffer(0.6 + walk, join_style="mitre").difference(
                            block.buffer(0.6, join_style="mitre")
                        )
                        self.ground.add(
                            _apply(ring, self.street_to_px),
                            self.jitter((196, 194, 186), 0.03),
                            z=_Z_WALK,
                            texture=(0.05, 0.0, 0.04, 0),
                        )
                    self.block(block, depths, setback - road_w / 2, asphalt)
                u = u_next
            v = v_next
        self.road(
            box(-half_x - 80, v - road_w / 2, half_x + 80, v + road_w / 2),
            asphalt,
            road_tex,
            along=(1.0, 0.0),
            lane=road_w / 2 - 1.3,
        )

    def road(self, rect: Polygon, asphalt, texture, *, along, lane: float) -> None:
        if not self.visible(rect):
            return
        self.ground.add(
            _apply(rect, self.street_to_px), self.jitter(asphalt, 0.03), z=_Z_ROAD, texture=texture
        )
        # Cars parked at the kerb or driving in the lanes.
        rng = self.rng
        (u0, v0, u1, v1) = rect.bounds
        cu, cv = (u0 + u1) / 2, (v0 + v1) / 2
        extent = (u1 - u0) if along[0] else (v1 - v0)
        s = -extent / 2 + rng.uniform(0, 40)
        while s < extent / 2:
            side = 1 if rng.random() < 0.5 else -1
            offset = side * (lane if rng.random() < 0.6 else lane - 2.2)
            if along[0]:
                x, y, heading = cu + s, cv + offset, 0.0 if side > 0 else 180.0
            else:
                x, y, heading = cu + offset, cv + s, 90.0 if side > 0 else 270.0
            car_frame = self.street_to_px @ Affine.translation(x, y) @ Affine.rotation(heading)
            if self.visible(Point(x, y)):
                self.car(car_frame)
            s += rng.uniform(12, 70)

    def block(self, block: Polygon, depths, to_road: float, asphalt) -> None:
        rng = self.rng
        kind = rng.random()
        if kind < 0.07:
            return self.park(block)
        if kind < 0.10:
            return self.commercial(block, asphalt)
        u0, v0, u1, v1 = block.bounds
        edges = [0.0]
        length = u1 - u0
        while length - edges[-1] > 55.0:
            edges.append(edges[-1] + rng.uniform(20.0, 35.0))
        if length - edges[-1] > 35.0:
            edges.append(edges[-1] + (length - edges[-1]) / 2)
        edges.append(length)
        for a, b in zip(edges[:-1], edges[1:], strict=True):
            for row in (0, 1):
                depth = depths[row]
                if row == 0:  # fronts the road above; local y grows into the lot
                    frame = Affine.translation(u0 + a, v0)
                else:  # fronts the road below: flip y
                    frame = Affine.translation(u0 + a, v1) @ Affine.scale(1, -1)
                lot = box(0, 0, b - a, depth)
                if self.visible(_apply(lot, frame)):
                    self.parcel(self.street_to_px @ frame, b - a, depth, to_road)

    # ---- a residential parcel (local metres: x along the street, y from the front)
    def parcel(self, frame: Affine, width: float, depth: float, to_road: float) -> None:
        rng = self.rng
        lawn = self.lawn * rng.uniform(0.94, 1.06, size=3)
        if rng.random() < 0.12:  # parched lawn
            lawn = lawn * 0.65 + np.array([150, 142, 105]) * 0.35
        self.ground.add(
            _apply(box(0, 0, width, depth), frame),
            self.jitter(lawn, 0.04),
            z=_Z_LAWN,
            texture=(0.12, 0.10, 0.07, 0.0),
        )
        if rng.random() < 0.035:
            return self.vacant(frame, width, depth)
        taken: list[Polygon] = []
        side = rng.uniform(1.5, 3.5)
        house_w = float(np.clip(rng.uniform(12.0, 24.0), 8.0, width - 2 * side))
        house_d = rng.uniform(10.0, 15.5)
        setback = rng.uniform(5.5, 8.5)
        hx = side + rng.uniform(0.0, max(0.0, width - 2 * side - house_w))
        main = (hx, setback, hx + house_w, setback + house_d)
        rects = [main]
        left = rng.random() < 0.5
        if rng.random() < 0.65 and setback > 4.0:
            gw, gd = rng.uniform(5.5, 7.0), rng.uniform(3.0, setback - 2.0)
            gx = hx if left else hx + house_w - gw
            rects.append((gx, setback - gd, gx + gw, setback))
            drive_x, drive_end = (gx + 0.3, gx + gw - 0.3), setback - gd
        else:
            dx = hx + 0.5 if left else hx + house_w - 5.5
            drive_x, drive_end = (dx, dx + 5.0), setback
        paving = self.jitter(_PAVING_COLOURS[0], 0.04)
        driveway = box(drive_x[0], -to_road, drive_x[1], drive_end)
        self.ground.add(
            _apply(driveway, frame), paving, z=_Z_PAVING, texture=(0.05, 0.0, 0.04, 0.0)
        )
        for _ in range(int(rng.choice([0, 1, 1, 2], p=[0.45, 0.25, 0.15, 0.15]))):
            y = rng.uniform(-to_road + 2.6, max(-to_road + 2.7, drive_end - 2.6))
            self.car(frame @ Affine.translation(sum(drive_x) / 2, y) @ Affine.rotation(90))
        self.house(frame, rects)
        taken.append(box(hx - 0.5, setback - 8, hx + house_w + 0.5, setback + house_d + 0.5))
        yard = (1.2, setback + house_d + 1.2, width - 1.2, depth - 1.2)
        if rng.random() < 0.45:  # patio / lanai behind the house
            px0 = rng.uniform(hx, hx + house_w * 0.5)
            patio = box(
                px0,
                setback + house_d,
                min(px0 + rng.uniform(4, 9), hx + house_w),
                setback + house_d + rng.uniform(2.5, 4.0),
            )
            self.ground.add(
                _apply(patio, frame),
                self.jitter(paving, 0.03),
                z=_Z_PAVING,
                texture=(0.04, 0.0, 0.04, 0.0),
            )
        if rng.random() < self.pool_rate:
            deck = self.pool(frame, yard)
            if deck is not None:
                taken.append(deck)
        self.yard_things(frame, yard, taken)
        self.plant(frame, width, depth, taken, n=int(rng.poisson(2.0)))

    def house(self, frame: Affine, rects) -> None:
        rng = self.rng
        blue = rng.random() < 0.04
        colour = (
            _BLUE_ROOFS[int(rng.integers(len(_BLUE_ROOFS)))]
            if blue
            else self.pick(_ROOF_COLOURS)[1]
        )
        colour = self.jitter(colour, 0.07)
        style = str(rng.choice(["hip", "gable", "flat"], p=[0.55, 0.38, 0.07]))
        grain = 0.12 if colour[0] > colour[2] * 1.6 else 0.07  # tile roofs look rougher
        height = rng.uniform(3.8, 7.5)
        footprint = []
        for k, (x0, y0, x1, y1) in enumerate(rects):
            rect_px = _apply(box(x0, y0, x1, y1), frame)
            footprint.append(rect_px)
            self.shadows.add(self.cast(rect_px, height * (0.75 if k else 1.0)), _SHADOW)
            for facet, dx, dy in _roof_facets(x0, y0, x1, y1, style):
                ux, uy = _direction(frame, dx, dy) if (dx or dy) else (0.0, 0.0)
                light = 1.0 + 0.24 * (ux * self.sun[0] + uy * self.sun[1])
                self.roofs.add(
                    _apply(facet, frame),
                    tuple(np.clip(np.multiply(colour, light), 0, 255)),
                    texture=(0.03, 0.03, grain, 0.0),
                )
        if blue:
            self.distractor(shapely.union_all(footprint), "roof")
        if rng.random() < 0.03:  # a blue tarp over storm damage
            x0, y0, x1, y1 = rects[0]
            tw, th = rng.uniform(3, min(7, x1 - x0 - 1)), rng.uniform(2.5, min(6, y1 - y0 - 1))
            cx, cy = rng.uniform(x0 + tw / 2, x1 - tw / 2), rng.uniform(y0 + th / 2, y1 - th / 2)
            tarp = affinity.rotate(box(-tw / 2, -th / 2, tw / 2, th / 2), rng.uniform(-12, 12))
            self.tarp(_apply(affinity.translate(tarp, cx, cy), frame), self.roofs)

    def tarp(self, geom_px, builder: _PassBuilder) -> None:
        colour = self.jitter((34, 94, 188), 0.08)
        builder.add(geom_px, colour, z=_Z_TARP, texture=(0.0, 0.22, 0.08, 0.0))
        self.distractor(geom_px, "tarp")

    def car(self, frame: Affine) -> None:
        """A car centred on the frame origin, nose along +x."""
        k, colour = self.pick(_CAR_COLOURS)
        colour = self.jitter(colour, 0.05)
        body = box(-2.3, -0.9, 2.3, 0.9).buffer(-0.3).buffer(0.3)
        body_px = _apply(body, frame)
        self.ground.add(body_px, colour, z=_Z_CAR, texture=(0.0, 0.0, 0.05, 0.0))
        glass = (28, 32, 38)
        self.ground.add(_apply(box(0.35, -0.78, 1.25, 0.78), frame), glass, z=_Z_GLASS)
        self.ground.add(_apply(box(-1.95, -0.72, -1.35, 0.72), frame), glass, z=_Z_GLASS)
        self.shadows.add(self.cast(body_px, 1.4).difference(body_px), _SHADOW)
        if k in _BLUE_CARS:
            self.distractor(body_px, "car")

    # ---- pools
    def pool(self, frame: Affine, yard) -> Polygon | None:
        """Place a pool in the back yard; returns its deck (local metres) or None."""
        rng = self.rng
        shape = str(rng.choice(POOL_SHAPES, p=[0.34, 0.12, 0.18, 0.14, 0.22]))
        above_ground = shape == "round" and rng.random() < 0.75
        margin = rng.uniform(0.6, 1.0) if above_ground else rng.uniform(1.0, 2.6)
        yx0, yy0, yx1, yy1 = yard
        cap = min(POOL_SIDE_M[1], max(yx1 - yx0, yy1 - yy0) - 2 * margin)
        for _ in range(8):
            outline = _pool_outline(rng, shape, cap)
            if outline is None:
                return None
            r = rng.random()
            angle = 0.0 if r < 0.6 else (90.0 if r < 0.75 else rng.uniform(-30, 30))
            outline = affinity.rotate(outline, angle, origin=(0, 0))
            minx, miny, maxx, maxy = shapely.bounds(
                affinity.rotate(
                    shapely.envelope(affinity.rotate(outline, -angle, origin=(0, 0))),
                    angle,
                    origin=(0, 0),
                )
            )
            lo_x, hi_x = yx0 + margin - minx, yx1 - margin - maxx
            lo_y, hi_y = yy0 + margin - miny, yy1 - margin - maxy
            if lo_x <= hi_x and lo_y <= hi_y:
                break
            cap *= 0.85
        else:
            return None
        cx, cy = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
        outline = affinity.translate(outline, cx, cy)
        deck = affinity.translate(
            affinity.rotate(
                shapely.envelope(
                    affinity.rotate(affinity.translate(outline, -cx, -cy), -angle, origin=(0, 0))
                ).buffer(margin, join_style="mitre"),
                angle,
                origin=(0, 0),
            ),
            cx,
            cy,
        )
        outline_px = _apply(outline, frame)
        if not self.scene_px.contains(outline_px):
            return deck  # cut by the scene edge: keep the yard free but draw no pool
        condition = str(rng.choice(CONDITIONS, p=[0.7, 0.15, 0.15]))
        px = 1.0 / self.gsd
        ux, uy = _direction(frame, math.cos(math.radians(angle)), math.sin(math.radians(angle)))
        c = outline_px.centroid
        half = _longest_side(outline_px) / 2
        if above_ground:
            wall = self.jitter(
                [(200, 200, 196), (120, 124, 130), (70, 96, 130)][int(rng.integers(3))], 0.05
            )
            rim = outline_px.buffer(0.3 * px)
            self.ground.add(rim, wall, z=_Z_RIM, texture=(0.0, 0.0, 0.05, 0.0))
            self.shadows.add(self.cast(rim, 1.2).difference(rim), _SHADOW)
        else:
            self.ground.add(
                _apply(deck, frame),
                self.jitter(_PAVING_COLOURS[int(rng.integers(len(_PAVING_COLOURS)))], 0.05),
                z=_Z_PAVING,
                texture=(0.04, 0.03, 0.06, 0.0),
            )
            coping = outline_px.buffer(rng.uniform(0.3, 0.5) * px, join_style="mitre")
            self.ground.add(
                coping, self.jitter((216, 212, 198), 0.03), z=_Z_RIM, texture=(0.0, 0.0, 0.04, 0.0)
            )
        if condition == "green":
            water = self.jitter(
                (rng.uniform(46, 72), rng.uniform(90, 116), rng.uniform(60, 84)), 0.05
            )
            self.ground.add(
                outline_px,
                water,
                z=_Z_WATER,
                texture=(0.10, 0.14, 0.03, 0.0),
                gradient=(c.x, c.y, ux, uy, half, rng.uniform(-0.15, 0.15), 0.0),
            )
        else:
            water = (rng.uniform(58, 100), rng.uniform(160, 192), rng.uniform(196, 228))
            self.ground.add(
                outline_px,
                water,
                z=_Z_WATER,
                texture=(0.0, 0.03, 0.02, 0.14),
                gradient=(
                    c.x,
                    c.y,
                    ux,
                    uy,
                    half,
                    rng.choice([-1, 1]) * rng.uniform(0.08, 0.2),
                    0.0,
                ),
            )
            if not above_ground:
                band = max(0.25 * px, 0.9)
                self.ground.add(
                    outline_px.difference(outline_px.buffer(-band)),
                    np.multiply(water, 0.62),
                    z=_Z_TILE,
                )
        if condition == "covered":
            local = affinity.rotate(affinity.translate(outline, -cx, -cy), -angle, origin=(0, 0))
            x0, y0, x1, y1 = local.bounds
            cut = x0 + (x1 - x0) * rng.uniform(0.35, 0.85)
            cover = local.intersection(box(x0 - 1, y0 - 1, cut, y1 + 1)).buffer(0.15)
            cover = affinity.translate(affinity.rotate(cover, angle, origin=(0, 0)), cx, cy)
            colour = self.jitter(_COVER_COLOURS[int(rng.integers(len(_COVER_COLOURS)))], 0.05)
            self.ground.add(
                _apply(cover, frame), colour, z=_Z_COVER, texture=(0.0, 0.10, 0.05, 0.0)
            )
        if not above_ground and rng.random() < 0.25:
            self.screen(frame, deck, angle, (cx, cy))
        self.pools.append(_Pool(outline_px, condition, shape))
        if rng.random() < 0.3:  # a tree at the pool edge, shading part of it
            edge = shapely.get_coordinates(
                outline.exterior.interpolate(rng.random(), normalized=True)
            )[0]
            out = edge - np.array([cx, cy])
            out /= np.linalg.norm(out) or 1.0
            r = rng.uniform(2.0, 4.5)
            self.tree(frame, *(edge + out * r * rng.uniform(0.2, 0.9)), radius=r)
        return deck

    def screen(self, frame: Affine, deck, angle: float, centre) -> None:
        """A Florida pool cage: a screened aluminium frame over the pool and deck."""
        rng = self.rng
        cx, cy = centre
        local = affinity.rotate(affinity.translate(deck, -cx, -cy), -angle, origin=(0, 0))
        x0, y0, x1, y1 = local.buffer(rng.uniform(0.3, 1.0), join_style="mitre").bounds
        to_px = frame @ Affine.translation(cx, cy) @ Affine.rotation(angle)
        cage = _apply(box(x0, y0, x1, y1), to_px)
        self.shadows.add(cage, _SCREEN)
        colour = (212, 212, 206) if rng.random() < 0.5 else (62, 56, 50)
        beam = max(0.1, 0.5 * self.gsd)  # half-width: at least a pixel wide
        beams = [box(x0, y0, x1, y1).exterior.buffer(beam, cap_style="flat")]
        step = rng.uniform(2.0, 3.0)
        for x in np.arange(x0 + step, x1 - 0.5, step):
            beams.append(box(x - beam, y0, x + beam, y1))
        self.roofs.add(_apply(shapely.union_all(beams), to_px), colour)

    # ---- yards, trees and odd things
    def yard_things(self, frame: Affine, yard, taken: list[Polygon]) -> None:
        rng = self.rng
        yx0, yy0, yx1, yy1 = yard

        def spot(w: float, h: float, angle: float = 0.0):
            for _ in range(6):
                if yx1 - yx0 < w + 0.5 or yy1 - yy0 < h + 0.5:
                    return None
                cx, cy = (
                    rng.uniform(yx0 + w / 2, yx1 - w / 2),
                    rng.uniform(yy0 + h / 2, yy1 - h / 2),
                )
                geom = affinity.translate(
                    affinity.rotate(box(-w / 2, -h / 2, w / 2, h / 2), angle), cx, cy
                )
                if not any(geom.intersects(t) for t in taken):
                    taken.append(geom.buffer(0.5))
                    return geom
            return None

        if rng.random() < 0.15 and (geom := spot(rng.uniform(2.5, 4.0), rng.uniform(2.5, 3.5))):
            shed = _apply(geom, frame)
            colour = self.jitter(
                [(190, 190, 186), (120, 100, 84), (96, 98, 100)][int(rng.integers(3))]
            )
            self.roofs.add(shed, colour, texture=(0.0, 0.0, 0.06, 0.0))
            shadow = self.cast(shed, rng.uniform(2.6, 3.4))
            self.shadows.add(shadow, _SHADOW)
            self.distractor(shadow.difference(shed), "shadow")
        if rng.random() < 0.05 and (geom := spot(4.6, 4.6)):
            c = geom.centroid
            disc = _apply(Point(c.x, c.y).buffer(rng.uniform(1.8, 2.3)), frame)
            pad = self.jitter([(40, 84, 170), (46, 120, 60), (170, 40, 40)][int(rng.integers(3))])
            self.ground.add(disc, pad, z=_Z_TRAMPOLINE)
            mat = disc.buffer(-0.35 / self.gsd)
            self.ground.add(mat, (30, 30, 33), z=_Z_TRAMPOLINE, texture=(0.0, 0.0, 0.05, 0.0))
            self.shadows.add(self.cast(disc, 1.0, hull=False).difference(disc), _SHADOW)
            self.distractor(disc, "trampoline")
        if rng.random() < 0.03 and (
            geom := spot(rng.uniform(3, 6), rng.uniform(2, 4), rng.uniform(0, 90))
        ):
            self.tarp(_apply(geom, frame), self.ground)
        if rng.random() < 0.15:
            r = rng.uniform(1.0, 3.0)
            c = (rng.uniform(0, yx1 + 1), rng.uniform(0, yy1 + 1))
            soil = affinity.translate(_blob(rng, r, rough=0.15), *c)
            if not any(soil.intersects(t) for t in taken):
                self.ground.add(
                    _apply(soil, frame),
                    self.jitter((176, 160, 128), 0.06),
                    z=_Z_SOIL,
                    texture=(0.12, 0.05, 0.05, 0.0),
                )

    def plant(self, frame: Affine, width: float, depth: float, taken, *, n: int) -> None:
        rng = self.rng
        for _ in range(n):
            x, y = rng.uniform(0.5, width - 0.5), rng.uniform(0.5, depth - 0.5)
            if any(t.contains(Point(x, y)) for t in taken):
                continue
            self.tree(frame, x, y, radius=rng.uniform(1.5, 6.0))

    def tree(self, frame: Affine, x: float, y: float, *, radius: float) -> None:
        rng = self.rng
        palm = rng.random() < 0.3
        if palm:
            radius = min(radius, 3.5)
            crown = _palm(rng, radius)
            rgb = self.jitter((96, 116, 62), 0.08)
            texture, dome = (0.0, 0.10, 0.14, 0.0), 0.25
        else:
            crown = _blob(rng, radius, rough=0.07)
            rgb = self.jitter(
                [(56, 76, 42), (44, 60, 36), (78, 98, 52)][int(rng.integers(3))], 0.08
            )
            texture, dome = (0.05, 0.32, 0.14, 0.0), 0.5
        canopy = _apply(affinity.translate(crown, x, y), frame)
        c = canopy.centroid
        height = 2.0 * radius + rng.uniform(2.0, 6.0)
        self.trees.append(
            _Tree(
                canopy=canopy,
                shadow=self.cast(canopy, height, hull=False),
                rgb=rgb,
                texture=texture,
                gradient=(c.x, c.y, self.sun[0], self.sun[1], radius / self.gsd, 0.28, dome),
            )
        )

    def vacant(self, frame: Affine, width: float, depth: float) -> None:
        rng = self.rng
        sand = np.array([176, 162, 128]) * rng.uniform(0.3, 0.8) + self.lawn * 0.6
        self.ground.add(
            _apply(box(0.5, 0.5, width - 0.5, depth - 0.5), frame),
            self.jitter(sand / (sand.max() / 170), 0.06),
            z=_Z_SOIL,
            texture=(0.22, 0.10, 0.06, 0.0),
        )
        taken = []
        if rng.random() < 0.5:
            r = rng.uniform(2.5, min(7.0, width / 2 - 2, depth / 2 - 2))
            taken.append(self.pond(frame, width / 2, depth / 2, r))
        self.plant(frame, width, depth, taken, n=int(rng.poisson(2.5)))

    def pond(self, frame: Affine, x: float, y: float, radius: float) -> Polygon:
        """A natural pond with a muddy or reedy margin; returns its outline (local metres)."""
        rng = self.rng
        water = affinity.translate(
            _blob(rng, radius, rough=0.14, stretch=rng.uniform(0.8, 1.6)), x, y
        )
        water_px = _apply(water, frame)
        edge = self.jitter([(140, 128, 92), (86, 98, 56)][int(rng.integers(2))], 0.05)
        self.ground.add(
            water_px.buffer(rng.uniform(0.8, 2.5) / self.gsd),
            edge,
            z=_Z_POND_EDGE,
            texture=(0.12, 0.10, 0.05, 0.0),
        )
        colour = self.jitter((rng.uniform(48, 72), rng.uniform(60, 82), rng.uniform(38, 56)), 0.05)
        self.ground.add(water_px, colour, z=_Z_POND, texture=(0.12, 0.05, 0.02, 0.0))
        self.distractor(water_px, "pond")
        return water

    def park(self, block: Polygon) -> None:
        """A green with a retention pond and trees around it."""
        rng = self.rng
        frame = self.street_to_px @ Affine.translation(*block.bounds[:2])
        u0, v0, u1, v1 = block.bounds
        w, h = u1 - u0, v1 - v0
        self.ground.add(
            _apply(box(0, 0, w, h), frame),
            self.jitter(self.lawn * 1.03, 0.04),
            z=_Z_LAWN,
            texture=(0.12, 0.06, 0.04, 0.0),
        )
        water = self.pond(
            frame, w / 2 + rng.uniform(-0.1, 0.1) * w, h / 2, min(w, h) * rng.uniform(0.22, 0.34)
        )
        shore = prep(water.buffer(3.0))
        for _ in range(int(rng.poisson(w * h / 600))):
            x, y = rng.uniform(0, w), rng.uniform(0, h)
            if shore.contains(Point(x, y)):
                continue
            if min(x, y, w - x, h - y) < 8 or rng.random() < 0.5:
                self.tree(frame, x, y, radius=rng.uniform(2.0, 6.0))

    def commercial(self, block: Polygon, asphalt) -> None:
        """A parking lot round a flat-roofed store."""
        rng = self.rng
        frame = self.street_to_px @ Affine.translation(*block.bounds[:2])
        u0, v0, u1, v1 = block.bounds
        w, h = u1 - u0, v1 - v0
        self.ground.add(
            _apply(box(0, 0, w, h), frame),
            self.jitter(asphalt * 1.05, 0.03),
            z=_Z_PAVING,
            texture=(0.10, 0.0, 0.07, 0.0),
        )
        bw, bh = w * rng.uniform(0.35, 0.6), h * rng.uniform(0.4, 0.6)
        bx = rng.uniform(2, w - bw - 2)
        building = box(bx, h - bh - 2, bx + bw, h - 2)
        building_px = _apply(building, frame)
        self.shadows.add(self.cast(building_px, rng.uniform(6, 10)), _SHADOW)
        self.roofs.add(
            building_px, self.jitter((212, 212, 208), 0.03), texture=(0.03, 0.0, 0.04, 0.0)
        )
        for _ in range(int(rng.integers(3, 9))):
            ax, ay = rng.uniform(bx + 2, bx + bw - 4), rng.uniform(h - bh, h - 6)
            unit = _apply(box(ax, ay, ax + 2, ay + 1.5), frame)
            self.shadows.add(self.cast(unit, 1.5), _SHADOW)
            self.roofs.add(unit, (150, 152, 154), z=1)
        stripe, half = (232, 232, 226), max(0.06, 0.5 * self.gsd)  # at least a pixel wide
        for row_y in np.arange(4.0, h - bh - 8.0, 14.0):
            for col_x in np.arange(3.0, w - 3.0, 2.8):
                self.ground.add(
                    _apply(box(col_x - half, row_y, col_x + half, row_y + 5.0), frame),
                    stripe,
                    z=_Z_PAVING,  # added after the lot, so drawn over it
                )
                if rng.random() < 0.55:
                    self.car(
                        frame @ Affine.translation(col_x + 1.4, row_y + 2.5) @ Affine.rotation(90)
                    )

    # ---- after the layout: occlusion and the passes
    def finish(self) -> tuple[list[_Pass], list[tuple[_Pool, float]]]:
        """Thin canopies so no pool is more than `MAX_OCCLUSION` hidden; freeze the passes.

        Returns the passes in drawing order and each pool with its hidden fraction.
        """
        canopies = np.empty(len(self.trees), dtype=object)
        canopies[:] = [t.canopy for t in self.trees]
        keep = np.ones(len(canopies), dtype=bool)
        index = shapely.STRtree(canopies)
        for pool in self.pools:
            hits = index.query(pool.outline, predicate="intersects")
            # Drop the trees covering most of the pool first until enough of it shows.
            hits = hits[
                np.argsort(-shapely.area(shapely.intersection(canopies[hits], pool.outline)))
            ]
            while _hidden(pool.outline, canopies[hits[keep[hits]]]) > MAX_OCCLUSION - 0.02:
                keep[hits[keep[hits]][0]] = False
        survivors = canopies[keep]
        index = shapely.STRtree(survivors)
        pools = [
            (pool, _hidden(pool.outline, survivors[index.query(pool.outline)]))
            for pool in self.pools
        ]
        for tree, kept in zip(self.trees, keep, strict=True):
            if kept:
                self.tree_shadows.add(tree.shadow, _TREE_SHADOW)
                self.canopies.add(
                    tree.canopy, tree.rgb, texture=tree.texture, gradient=tree.gradient
                )
        builders = (self.ground, self.shadows, self.roofs, self.tree_shadows, self.canopies)
        return [b.freeze() for b in builders], pools


def _hidden(outline: Polygon, canopies: np.ndarray) -> float:
    """Fraction of a pool's area under any of the canopies."""
    if len(canopies) == 0:
        return 0.0
    return shapely.union_all(canopies).intersection(outline).area / outline.area


# --------------------------------------------------------------------------- rendering


class _Renderer:
    """Draws any window of the scene from the frozen passes; windows agree at their seams."""

    def __init__(self, passes: Sequence[_Pass], textures: _Textures) -> None:
        self.passes = passes
        self.textures = textures

    def window(self, row0: int, col0: int, height: int, width: int) -> np.ndarray:
        """uint8 [3, height, width]: the scene's pixels in that window, bands first."""
        r0, c0 = row0 - _HALO, col0 - _HALO
        h, w = height + 2 * _HALO, width + 2 * _HALO
        fields = self.textures.fields(r0, c0, h, w)
        canvas = np.zeros((h, w, 3), dtype=np.float32)
        shaded = np.zeros((h, w), dtype=bool)
        for p in self.passes:
            ids = p.object_ids(r0, c0, h, w)
            if ids is None:
                continue
            mask = ids >= 0
            if p.shade:
                fresh = mask & ~shaded  # overlapping shadows do not darken twice
                canvas[fresh] *= p.rgb[ids[fresh]]
                shaded |= mask
                continue
            idx = ids[mask]
            light = 1.0 + np.einsum("mf,fm->m", p.texture[idx], fields[:, mask])
            graded = p.has_gradient[idx]
            if graded.any():
                rows, cols = np.nonzero(mask)
                g = p.gradient[idx[graded]]
                dx = cols[graded] + c0 + 0.5 - g[:, 0]
                dy = rows[graded] + r0 + 0.5 - g[:, 1]
                t = np.clip((dx * g[:, 2] + dy * g[:, 3]) / g[:, 4], -1.0, 1.0)
                r2 = np.minimum((dx * dx + dy * dy) / (g[:, 4] ** 2), 1.0)
                light[graded] += g[:, 5] * t + g[:, 6] * (0.5 - r2)
            canvas[mask] = p.rgb[idx] * light[:, None]
            shaded[mask] = False
        canvas *= (1.0 + 0.05 * self.textures.illumination(r0, c0, h, w))[..., None]
        # Slight optical blur, then haze and sensor noise as a real camera adds them.
        canvas = sum(k * canvas[i : i + h - 4] for i, k in enumerate(_BLUR))
        canvas = sum(k * canvas[:, i : i + w - 4] for i, k in enumerate(_BLUR))
        grey = canvas.mean(axis=2, keepdims=True)
        canvas = (grey + 0.9 * (canvas - grey)) * 0.93 + 9.0  # a little haze
        canvas += 2.5 * self.textures.sensor_noise(row0, col0, height, width)
        return np.clip(canvas + 0.5, 0, 255).astype(np.uint8).transpose(2, 0, 1)


# --------------------------------------------------------------------------- arguments


def _check_crs(crs: str) -> tuple[ProjCRS, float]:
    """The CRS and its metres per unit; InputError unless it is a projected CRS."""
    try:
        proj = ProjCRS.from_user_input(crs)
    except CRSError as exc:
        raise InputError(
            f"CRS {crs!r} is not a coordinate reference system PROJ knows "
            f"({exc}); give an EPSG code such as EPSG:32617."
        ) from None
    if not proj.is_projected:
        raise InputError(
            f"CRS {crs!r} is not projected (its units are not linear); give a "
            "projected CRS in metres or feet such as EPSG:32617 (UTM 17N)."
        )
    factor = proj.axis_info[0].unit_conversion_factor if proj.axis_info else 1.0
    return proj, float(factor)


def _default_origin(proj: ProjCRS, seed: int, unit_m: float) -> tuple[float, float]:
    """Upper-left corner near Cape Coral, FL (or the CRS's area of use), one cell per seed."""
    lon, lat = _ANCHOR_LONLAT
    area = proj.area_of_use
    if area is not None and not (area.west <= lon <= area.east and area.south <= lat <= area.north):
        lon, lat = (area.west + area.east) / 2, (area.south + area.north) / 2
    x, y = Transformer.from_crs("EPSG:4326", proj, always_xy=True).transform(lon, lat)
    if not (math.isfinite(x) and math.isfinite(y)):
        x, y = 0.0, 0.0
    cell = _SEED_CELL_M / unit_m
    return x + ((seed % 9) - 4) * cell, y + ((seed // 9) % 9 - 4) * cell


def _snap(value: float, step: float) -> float:
    """Round to a multiple of 100 pixels so scenes at one gsd share a pixel lattice."""
    return round(value / (100 * step)) * 100 * step


def _check_args(seed, size, gsd, tiles, compress, origin) -> tuple[int, int]:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed {seed!r} is not a whole number >= 0; pass e.g. seed=0.")
    try:
        width, height = (int(v) for v in size)
    except (TypeError, ValueError):
        raise InputError(
            f"size {size!r} is not a (width, height) pair of pixel counts; "
            "pass e.g. size=(2500, 2500)."
        ) from None
    if not (64 <= width <= 100_000 and 64 <= height <= 100_000):
        raise InputError(
            f"size {width}x{height} px is out of range; each side must be 64 to 100000 pixels."
        )
    if width * height > _MAX_PIXELS:
        raise InputError(
            f"size {width}x{height} px is over {_MAX_PIXELS // 10**6} Mpx, more than the layout "
            "(held in memory, ~2 MB per Mpx) should hold; make several scenes with "
            "different origins instead."
        )
    if not (isinstance(gsd, (int, float)) and math.isfinite(gsd) and 0.05 <= gsd <= 2.0):
        raise InputError(
            f"gsd {gsd!r} m per pixel is out of range; pools are 3-14 m, so "
            "use 0.05 to 2.0 (0.3 is typical)."
        )
    if isinstance(tiles, bool) or not isinstance(tiles, (int, np.integer)) or tiles < 1:
        raise InputError(
            f"tiles {tiles!r} is not a whole number >= 1; pass e.g. tiles=2 for a 2x2 mosaic."
        )
    if min(width, height) // tiles < 32:
        raise InputError(
            f"tiles={tiles} cuts a {width}x{height} px scene into tiles under "
            "32 px; use fewer tiles or a bigger size."
        )
    if compress not in ("jpeg", "deflate"):
        raise InputError(f"compress {compress!r} is not supported; use 'jpeg' or 'deflate'.")
    if origin is not None:
        try:
            ox, oy = (float(v) for v in origin)
        except (TypeError, ValueError):
            raise InputError(
                f"origin {origin!r} is not an (x, y) pair of map "
                "coordinates; pass e.g. origin=(405000, 2942000)."
            ) from None
        if not (math.isfinite(ox) and math.isfinite(oy)):
            raise InputError(f"origin {origin!r} is not finite; pass real map coordinates.")
    return width, height


def _tile_edges(length: int, tiles: int) -> list[int]:
    return [round(i * length / tiles) for i in range(tiles + 1)]


def _image_names(tiles: int) -> list[list[str]]:
    if tiles == 1:
        return [["scene.tif"]]
    digits = len(str(tiles - 1))
    return [
        [f"scene_r{r:0{digits}d}_c{c:0{digits}d}.tif" for c in range(tiles)] for r in range(tiles)
    ]


def _existing_outputs(out_dir: Path) -> list[Path]:
    names = ("scene.tif", TRUTH_NAME, DISTRACTORS_NAME)
    found = [out_dir / n for n in names if (out_dir / n).exists()]
    return found + sorted(out_dir.glob("scene_r*_c*.tif"))


# --------------------------------------------------------------------------- writing


def _write_raster(
    path: Path,
    renderer: _Renderer,
    *,
    row0: int,
    col0: int,
    height: int,
    width: int,
    crs: CRS,
    transform: Affine,
    compress: str,
) -> None:
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 3,
        "dtype": "uint8",
        "crs": crs,
        "transform": transform @ Affine.translation(col0, row0),
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "interleave": "pixel",
        "BIGTIFF": "IF_SAFER",
    }
    if compress == "jpeg":
        profile.update(compress="jpeg", photometric="ycbcr", jpeg_quality=90)
    else:
        profile.update(compress="deflate", predictor=2, photometric="rgb")
    with rasterio.open(path, "w", **profile) as dst:
        dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
        for r in range(0, height, _RENDER_BLOCK):
            for c in range(0, width, _RENDER_BLOCK):
                h, w = min(_RENDER_BLOCK, height - r), min(_RENDER_BLOCK, width - c)
                dst.write(renderer.window(row0 + r, col0 + c, h, w), window=Window(c, r, w, h))


def _to_map(geoms, transform: Affine):
    """Pixel-space polygons -> map polygons, pixel-edge convention, exterior rings CCW."""
    moved = [
        affinity.affine_transform(
            g, (transform.a, transform.b, transform.d, transform.e, transform.c, transform.f)
        )
        for g in geoms
    ]
    return [orient(g, 1.0) for g in moved]


def _write_truth(
    path: Path,
    distractor_path: Path,
    pools,
    distractors,
    *,
    crs: str,
    transform: Affine,
    gsd: float,
) -> None:
    pool_frame = gpd.GeoDataFrame(
        {
            "class": ["pool"] * len(pools),
            "condition": [p.condition for p, _ in pools],
            "occluded": [round(float(f), 3) for _, f in pools],
            "shape": [p.shape for p, _ in pools],
            "area_m2": [round(p.outline.area * gsd * gsd, 2) for p, _ in pools],
        },
        geometry=gpd.GeoSeries(_to_map([p.outline for p, _ in pools], transform), crs=crs),
    )
    distractor_frame = gpd.GeoDataFrame(
        {"kind": [k for _, k in distractors]},
        geometry=gpd.GeoSeries(_to_map([g for g, _ in distractors], transform), crs=crs),
    )
    # One layer per file, so any tool (geodetect train/evaluate included) reads the
    # truth without having to be told which layer.
    pool_frame.to_file(path, layer=POOL_LAYER, driver="GPKG", engine="pyogrio")
    distractor_frame.to_file(
        distractor_path, layer=DISTRACTOR_LAYER, driver="GPKG", engine="pyogrio"
    )


def synth_scene(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    size: tuple[int, int] = (2500, 2500),
    gsd: float = 0.3,
    tiles: int = 1,
    crs: str = "EPSG:32617",
    compress: str = "deflate",
    origin: tuple[float, float] | None = None,
    overwrite: bool = False,
) -> SynthScene:
    """Write a synthetic suburban orthomosaic and its pool ground truth to a folder.

    The scene is RGB uint8, north up, on the transform
    ``Affine(gsd, 0, x0, 0, -gsd, y0)`` (in CRS units) with ``(x0, y0)`` its upper-left
    corner. With ``tiles=K`` it is cut into K×K GeoTIFFs ``scene_r{r}_c{c}.tif`` on that
    one pixel grid (edges shared exactly, no overlap); otherwise it is ``scene.tif``.
    The pixels do not depend on ``tiles``. ``truth.gpkg`` holds layer ``pools`` (pool
    outlines in the scene CRS; ``class`` "pool", ``condition`` clean/green/covered,
    ``occluded`` fraction hidden by tree canopies, at most 0.4; ``shape``;
    ``area_m2``) and layer ``distractors`` (``kind``: tarp, roof, car, pond, shadow,
    trampoline).

    Args:
        out_dir: folder to write into; created if missing.
        seed: the scene is a pure function of the seed and the other arguments.
        size: ``(width, height)`` of the whole scene in pixels.
        gsd: ground sample distance, metres per pixel.
        tiles: K, to write a K×K mosaic of tiles instead of one file.
        crs: any projected CRS PROJ understands (EPSG code, WKT, PROJ string).
        compress: ``"deflate"`` (lossless) or ``"jpeg"`` (YCbCr, quality 90).
        origin: ``(x0, y0)`` upper-left corner in CRS units; by default a spot near
            Cape Coral, Florida (or the CRS's area of use) that differs per seed.
        overwrite: replace a scene already in ``out_dir``.

    Returns:
        A `SynthScene` describing the files written.

    Raises:
        InputError: an argument is out of range or the CRS is not projected.
        OutputError: ``out_dir`` already holds a scene and ``overwrite`` is False, or it
            cannot be written.
    """
    started = time.perf_counter()
    width, height = _check_args(seed, size, gsd, tiles, compress, origin)
    proj, unit_m = _check_crs(crs)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir} is a file, not a folder; give a folder for the scene.")
    existing = _existing_outputs(out_dir) if out_dir.is_dir() else []
    if existing and not overwrite:
        raise OutputError(
            f"{out_dir} already holds a synthetic scene ({existing[0].name}); "
            "use --overwrite (overwrite=True) or choose another folder."
        )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot create {out_dir} ({exc.strerror}); choose a writable folder."
        ) from None

    rio_crs = CRS.from_user_input(proj.to_wkt())
    crs_name = proj.to_string() if proj.to_epsg() is None else f"EPSG:{proj.to_epsg()}"
    if proj.to_epsg() is not None:
        rio_crs = CRS.from_epsg(proj.to_epsg())
    step = gsd / unit_m
    if origin is not None:
        x0, y0 = (float(v) for v in origin)
    else:
        x0, y0 = (_snap(v, step) for v in _default_origin(proj, int(seed), unit_m))
    transform = Affine(step, 0.0, x0, 0.0, -step, y0)

    suburb = _Suburb(np.random.default_rng([int(seed), 1]), width, height, float(gsd))
    suburb.build()
    passes, pools = suburb.finish()
    laid_out = time.perf_counter()
    renderer = _Renderer(passes, _Textures(int(seed), float(gsd)))

    names = _image_names(tiles)
    rows, cols = _tile_edges(height, tiles), _tile_edges(width, tiles)
    token = uuid.uuid4().hex[:8]
    pending: list[tuple[Path, Path]] = []
    try:
        for r in range(tiles):
            for c in range(tiles):
                final = out_dir / names[r][c]
                temp = out_dir / f".{final.stem}.{token}.tmp.tif"
                pending.append((temp, final))
                _write_raster(
                    temp,
                    renderer,
                    row0=rows[r],
                    col0=cols[c],
                    height=rows[r + 1] - rows[r],
                    width=cols[c + 1] - cols[c],
                    crs=rio_crs,
                    transform=transform,
                    compress=compress,
                )
        truth = out_dir / TRUTH_NAME
        temp = out_dir / f".truth.{token}.tmp.gpkg"
        distractors = out_dir / DISTRACTORS_NAME
        temp_distractors = out_dir / f".distractors.{token}.tmp.gpkg"
        pending += [(temp_distractors, distractors), (temp, truth)]
        _write_truth(
            temp,
            temp_distractors,
            pools,
            suburb.distractors,
            crs=crs_name,
            transform=transform,
            gsd=float(gsd),
        )
        for temp, final in pending:
            os.replace(temp, final)
    except BaseException as exc:
        for temp, _ in pending:
            temp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OutputError(
                f"cannot write the scene in {out_dir} ({exc.strerror or exc}); "
                "check free space and permissions."
            ) from exc
        raise
    written = {final for _, final in pending}
    for stale in existing:  # tiles of an earlier, differently cut scene
        if stale not in written:
            stale.unlink(missing_ok=True)
    log.info(
        "synth: %d pools, %d distractors; layout %.1fs, render+write %.1fs",
        len(pools),
        len(suburb.distractors),
        laid_out - started,
        time.perf_counter() - laid_out,
    )
    return SynthScene(
        image_paths=[final for _, final in pending[:-2]],
        truth_path=truth,
        distractors_path=distractors,
        crs=crs_name,
        gsd=float(gsd),
        width=width,
        height=height,
        n_pools=len(pools),
        n_distractors=len(suburb.distractors),
        transform=transform,
    )
