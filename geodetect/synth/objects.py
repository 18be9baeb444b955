"""The things a suburb is drawn with: pool, house, car, tree, pond, tarp, sports court
and solar panel shapes and colours, added to the render passes in scene pixels, with the
truth kept on the way."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import shapely
from affine import Affine
from shapely import affinity
from shapely.geometry import Point, Polygon, box

from geodetect.synth.render import Pass, PassBuilder

CONDITIONS = ("clean", "green", "covered")
POOL_SHAPES = ("rectangular", "oval", "kidney", "l_shaped", "round")
DISTRACTOR_KINDS = ("tarp", "roof", "car", "pond", "shadow", "trampoline", "court", "solar")
MAX_OCCLUSION = 0.4  # at least 60 % of every pool stays visible
POOL_SIDE_M = (3.0, 14.0)  # longest side of a pool, metres

# Paint order inside the ground pass (later covers earlier).
Z_BASE, Z_LAWN, Z_SOIL, Z_WALK, Z_ROAD, Z_PAVING, Z_POND_EDGE, Z_POND = range(8)
Z_RIM, Z_WATER, Z_TILE, Z_COVER, Z_TARP, Z_TRAMPOLINE, Z_CAR, Z_GLASS = range(8, 16)

SHADOW = (0.40, 0.43, 0.50)  # per-channel factor: shadows are dark and slightly blue
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
PAVING_COLOURS = ((192, 189, 180), (204, 188, 160), (214, 204, 184), (172, 126, 100))
# Hard courts as they look from the air: (surround, playing area), acrylic blues and greens
# (the pool-like ones) and the red-brown of clay and of painted asphalt.
_COURT_COLOURS = (
    (((52, 104, 78), (44, 92, 150)), 0.30),  # green surround, blue court
    (((46, 84, 138), (40, 70, 122)), 0.22),  # blue on blue
    (((60, 112, 80), (52, 98, 70)), 0.22),  # green on green
    (((44, 118, 128), (40, 100, 112)), 0.10),  # teal
    (((150, 84, 62), (168, 96, 70)), 0.16),  # clay red
)
_SOLAR_COLOURS = ((30, 38, 62), (24, 30, 44), (40, 52, 86))  # dark blue-black modules
_LINE = (236, 236, 232)


def apply_frame(geom, frame: Affine):
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


def blob(
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
    index: int = 0  # the pool's number in the layout, the same in every vintage


@dataclass(frozen=True)
class Vintage:
    """One flight over a suburb whose pools change between flights: the layout (seed)
    is the same, but the pools numbered in ``absent`` are not there (their yards are
    lawn and deck) and those in ``shrunk`` are :data:`SHRINK` times their size."""

    absent: frozenset[int] = frozenset()
    shrunk: frozenset[int] = frozenset()


SHRINK = 0.7  # a resized pool's side, relative (half its area)


class Drawing:
    """What to draw, pass by pass, in scene pixels, and the truth gathered on the way:
    pools, the trees that may hide them and the things a detector may take for a pool."""

    def __init__(
        self,
        rng: np.random.Generator,
        width: int,
        height: int,
        gsd: float,
        vintage: Vintage | None = None,
        *,
        confusers: bool = False,
    ) -> None:
        self.rng = rng
        self.confusers = confusers  # courts and solar panels
        # Courts and solar panels draw from a stream of their own, so adding them left
        # every other thing of a seeded suburb where it was.
        self.extra_rng = rng.spawn(1)[0]
        self.gsd = gsd
        self.vintage = vintage or Vintage()
        self.placed: list[Polygon] = []  # every pool of the layout, drawn or absent
        azimuth = math.radians(rng.uniform(-60, 60))  # shadows fall roughly north
        self.shadow_dir = np.array([math.sin(azimuth), -math.cos(azimuth)])
        self.sun = (-self.shadow_dir[0], -self.shadow_dir[1])
        self.shadow_per_m = rng.uniform(0.25, 0.6) / gsd  # shadow length per metre of height
        self.scene_px = box(0, 0, width, height)
        self.ground = PassBuilder()
        self.shadows = PassBuilder(shade=True)
        self.roofs = PassBuilder()
        self.tree_shadows = PassBuilder(shade=True)
        self.canopies = PassBuilder()
        self.pools: list[_Pool] = []
        self.trees: list[_Tree] = []
        self.distractors: list[tuple[Polygon, str]] = []

    # ---- small helpers
    def jitter(self, rgb, amount: float = 0.06, rng=None) -> tuple[float, float, float]:
        rng = self.rng if rng is None else rng
        base = np.asarray(rgb, dtype=float) * rng.uniform(1 - amount, 1 + amount)
        base *= rng.uniform(1 - amount / 3, 1 + amount / 3, size=3)
        return tuple(np.clip(base, 0, 255))

    def pick(self, table, rng=None):
        rng = self.rng if rng is None else rng
        weights = np.array([w for _, w in table], dtype=float)
        k = int(rng.choice(len(table), p=weights / weights.sum()))
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

    # ---- buildings and vehicles
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
            rect_px = apply_frame(box(x0, y0, x1, y1), frame)
            footprint.append(rect_px)
            self.shadows.add(self.cast(rect_px, height * (0.75 if k else 1.0)), SHADOW)
            for facet, dx, dy in _roof_facets(x0, y0, x1, y1, style):
                ux, uy = _direction(frame, dx, dy) if (dx or dy) else (0.0, 0.0)
                light = 1.0 + 0.24 * (ux * self.sun[0] + uy * self.sun[1])
                self.roofs.add(
                    apply_frame(facet, frame),
                    tuple(np.clip(np.multiply(colour, light), 0, 255)),
                    texture=(0.03, 0.03, grain, 0.0),
                )
        if blue:
            self.distractor(shapely.union_all(footprint), "roof")
        if self.confusers and self.extra_rng.random() < 0.06:
            self.solar(frame, rects[0])
        if rng.random() < 0.03:  # a blue tarp over storm damage
            x0, y0, x1, y1 = rects[0]
            tw, th = rng.uniform(3, min(7, x1 - x0 - 1)), rng.uniform(2.5, min(6, y1 - y0 - 1))
            cx, cy = rng.uniform(x0 + tw / 2, x1 - tw / 2), rng.uniform(y0 + th / 2, y1 - th / 2)
            tarp = affinity.rotate(box(-tw / 2, -th / 2, tw / 2, th / 2), rng.uniform(-12, 12))
            self.tarp(apply_frame(affinity.translate(tarp, cx, cy), frame), self.roofs)

    def solar(self, frame: Affine, rect) -> None:
        """Rows of solar modules (1.0 x 1.7 m) on a roof, on the side facing the sun."""
        rng = self.extra_rng
        x0, y0, x1, y1 = rect
        rows, cols = int(rng.integers(1, 4)), int(rng.integers(3, 10))
        module_w, module_h, gap = 1.0, 1.7, 0.04
        cols = min(cols, int((x1 - x0 - 1.6) // module_w))
        rows = min(rows, int(((y1 - y0) / 2 - 0.8) // module_h))
        if rows < 1 or cols < 2:
            return
        left = x0 + 0.8 + rng.uniform(0, x1 - x0 - 1.6 - cols * module_w)
        # the half of the roof whose slope faces the sun (local y: front or back)
        ux, uy = _direction(frame, 0.0, 1.0)
        back = ux * self.sun[0] + uy * self.sun[1] > 0
        top = (y1 - 0.8 - rows * module_h) if back else (y0 + 0.8)
        colour = self.jitter(_SOLAR_COLOURS[int(rng.integers(len(_SOLAR_COLOURS)))], 0.08, rng)
        modules = [
            box(
                left + c * module_w + gap,
                top + r * module_h + gap,
                left + (c + 1) * module_w - gap,
                top + (r + 1) * module_h - gap,
            )
            for r in range(rows)
            for c in range(cols)
        ]
        array_px = apply_frame(shapely.union_all(modules), frame)
        self.roofs.add(array_px, colour, z=2, texture=(0.0, 0.05, 0.05, 0.0))
        self.distractor(array_px.envelope.intersection(array_px.convex_hull), "solar")

    def court(self, frame: Affine, length: float, width: float, *, tennis: bool) -> None:
        """A hard sports court centred on the frame origin, long side along +x, with
        white lines: a tennis court (36.6 x 18.3 m with its surround) in a park, a
        basketball half court in a yard."""
        rng = self.extra_rng
        surround, playing = self.pick(_COURT_COLOURS, rng)[1]
        outline = box(-length / 2, -width / 2, length / 2, width / 2)
        outline_px = apply_frame(outline, frame)
        self.ground.add(
            outline_px, self.jitter(surround, 0.06, rng), z=Z_PAVING, texture=(0.03, 0.0, 0.04, 0.0)
        )
        # Lines 5 cm wide: at coarser pixels a line a pixel wide, blended into the surface.
        half = max(0.025, 0.5 * self.gsd)
        share = min(1.0, 0.1 / (2 * half))  # twice its share of the pixel: lines bleed
        line = tuple(np.multiply(_LINE, share) + np.multiply(playing, 1 - share))
        lines = []
        if tennis:
            pl, pw = 23.77, 10.97
            self.ground.add(
                apply_frame(box(-pl / 2, -pw / 2, pl / 2, pw / 2), frame),
                self.jitter(playing, 0.05, rng),
                z=Z_PAVING,
                texture=(0.02, 0.0, 0.03, 0.0),
            )
            lines += [box(-pl / 2, -pw / 2, pl / 2, pw / 2).exterior]
            for y in (-4.115, 4.115):  # singles sidelines
                lines.append(shapely.LineString([(-pl / 2, y), (pl / 2, y)]))
            for x in (-6.40, 6.40):  # service lines
                lines.append(shapely.LineString([(x, -4.115), (x, 4.115)]))
            lines.append(shapely.LineString([(-6.40, 0), (6.40, 0)]))
            net = apply_frame(box(-0.05, -pw / 2 - 0.9, 0.05, pw / 2 + 0.9), frame)
            self.ground.add(net.buffer(0.5 * self.gsd), (40, 42, 44), z=Z_PAVING)
            self.shadows.add(self.cast(net, 1.0), SHADOW)
        else:
            lines.append(outline.exterior)
            key_w, key_d = 4.9, 5.8  # the key, from the end with the hoop
            self.ground.add(
                apply_frame(box(length / 2 - key_d, -key_w / 2, length / 2, key_w / 2), frame),
                self.jitter(playing, 0.05, rng),
                z=Z_PAVING,
            )
            lines.append(box(length / 2 - key_d, -key_w / 2, length / 2, key_w / 2).exterior)
            lines.append(
                Point(length / 2 - key_d, 0)
                .buffer(1.8)
                .exterior.intersection(box(-length / 2, -width / 2, length / 2 - key_d, width / 2))
            )
        for geom in lines:
            self.ground.add(apply_frame(geom.buffer(half), frame), line, z=Z_PAVING)
        self.distractor(outline_px, "court")
        # drawn after the trees round it (see Suburb.park): nothing grows on a court
        self.trees = [t for t in self.trees if not t.canopy.intersects(outline_px)]

    def tarp(self, geom_px, builder: PassBuilder) -> None:
        colour = self.jitter((34, 94, 188), 0.08)
        builder.add(geom_px, colour, z=Z_TARP, texture=(0.0, 0.22, 0.08, 0.0))
        self.distractor(geom_px, "tarp")

    def car(self, frame: Affine) -> None:
        """A car centred on the frame origin, nose along +x."""
        k, colour = self.pick(_CAR_COLOURS)
        colour = self.jitter(colour, 0.05)
        body = box(-2.3, -0.9, 2.3, 0.9).buffer(-0.3).buffer(0.3)
        body_px = apply_frame(body, frame)
        self.ground.add(body_px, colour, z=Z_CAR, texture=(0.0, 0.0, 0.05, 0.0))
        glass = (28, 32, 38)
        self.ground.add(apply_frame(box(0.35, -0.78, 1.25, 0.78), frame), glass, z=Z_GLASS)
        self.ground.add(apply_frame(box(-1.95, -0.72, -1.35, 0.72), frame), glass, z=Z_GLASS)
        self.shadows.add(self.cast(body_px, 1.4).difference(body_px), SHADOW)
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
        outline_px = apply_frame(outline, frame)
        if not self.scene_px.contains(outline_px):
            return deck  # cut by the scene edge: keep the yard free but draw no pool
        index = len(self.placed)
        self.placed.append(outline_px)
        full = outline  # the tree at its edge stands where it stands in every vintage
        if index in self.vintage.shrunk:
            outline = affinity.scale(outline, SHRINK, SHRINK, origin=(cx, cy))
            outline_px = apply_frame(outline, frame)
        absent = index in self.vintage.absent
        if absent:  # draw it into passes nobody renders: the random draws stay the same
            kept = self.ground, self.shadows, self.roofs
            self.ground, self.shadows, self.roofs = PassBuilder(), PassBuilder(), PassBuilder()
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
            self.ground.add(rim, wall, z=Z_RIM, texture=(0.0, 0.0, 0.05, 0.0))
            self.shadows.add(self.cast(rim, 1.2).difference(rim), SHADOW)
        else:
            self.ground.add(
                apply_frame(deck, frame),
                self.jitter(PAVING_COLOURS[int(rng.integers(len(PAVING_COLOURS)))], 0.05),
                z=Z_PAVING,
                texture=(0.04, 0.03, 0.06, 0.0),
            )
            coping = outline_px.buffer(rng.uniform(0.3, 0.5) * px, join_style="mitre")
            self.ground.add(
                coping, self.jitter((216, 212, 198), 0.03), z=Z_RIM, texture=(0.0, 0.0, 0.04, 0.0)
            )
        if condition == "green":
            water = self.jitter(
                (rng.uniform(46, 72), rng.uniform(90, 116), rng.uniform(60, 84)), 0.05
            )
            self.ground.add(
                outline_px,
                water,
                z=Z_WATER,
                texture=(0.10, 0.14, 0.03, 0.0),
                gradient=(c.x, c.y, ux, uy, half, rng.uniform(-0.15, 0.15), 0.0),
            )
        else:
            water = (rng.uniform(58, 100), rng.uniform(160, 192), rng.uniform(196, 228))
            self.ground.add(
                outline_px,
                water,
                z=Z_WATER,
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
                    z=Z_TILE,
                )
        if condition == "covered":
            local = affinity.rotate(affinity.translate(outline, -cx, -cy), -angle, origin=(0, 0))
            x0, y0, x1, y1 = local.bounds
            cut = x0 + (x1 - x0) * rng.uniform(0.35, 0.85)
            cover = local.intersection(box(x0 - 1, y0 - 1, cut, y1 + 1)).buffer(0.15)
            cover = affinity.translate(affinity.rotate(cover, angle, origin=(0, 0)), cx, cy)
            colour = self.jitter(_COVER_COLOURS[int(rng.integers(len(_COVER_COLOURS)))], 0.05)
            self.ground.add(
                apply_frame(cover, frame), colour, z=Z_COVER, texture=(0.0, 0.10, 0.05, 0.0)
            )
        if not above_ground and rng.random() < 0.25:
            self.screen(frame, deck, angle, (cx, cy))
        if absent:
            self.ground, self.shadows, self.roofs = kept
        else:
            self.pools.append(_Pool(outline_px, condition, shape, index))
        if rng.random() < 0.3:  # a tree at the pool edge, shading part of it
            edge = shapely.get_coordinates(
                full.exterior.interpolate(rng.random(), normalized=True)
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
        cage = apply_frame(box(x0, y0, x1, y1), to_px)
        self.shadows.add(cage, _SCREEN)
        colour = (212, 212, 206) if rng.random() < 0.5 else (62, 56, 50)
        beam = max(0.1, 0.5 * self.gsd)  # half-width: at least a pixel wide
        beams = [box(x0, y0, x1, y1).exterior.buffer(beam, cap_style="flat")]
        step = rng.uniform(2.0, 3.0)
        for x in np.arange(x0 + step, x1 - 0.5, step):
            beams.append(box(x - beam, y0, x + beam, y1))
        self.roofs.add(apply_frame(shapely.union_all(beams), to_px), colour)

    # ---- trees and ponds
    def tree(self, frame: Affine, x: float, y: float, *, radius: float) -> None:
        rng = self.rng
        palm = rng.random() < 0.3
        if palm:
            radius = min(radius, 3.5)
            crown = _palm(rng, radius)
            rgb = self.jitter((96, 116, 62), 0.08)
            texture, dome = (0.0, 0.10, 0.14, 0.0), 0.25
        else:
            crown = blob(rng, radius, rough=0.07)
            rgb = self.jitter(
                [(56, 76, 42), (44, 60, 36), (78, 98, 52)][int(rng.integers(3))], 0.08
            )
            texture, dome = (0.05, 0.32, 0.14, 0.0), 0.5
        canopy = apply_frame(affinity.translate(crown, x, y), frame)
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

    def pond(self, frame: Affine, x: float, y: float, radius: float) -> Polygon:
        """A natural pond with a muddy or reedy margin; returns its outline (local metres)."""
        rng = self.rng
        water = affinity.translate(
            blob(rng, radius, rough=0.14, stretch=rng.uniform(0.8, 1.6)), x, y
        )
        water_px = apply_frame(water, frame)
        edge = self.jitter([(140, 128, 92), (86, 98, 56)][int(rng.integers(2))], 0.05)
        self.ground.add(
            water_px.buffer(rng.uniform(0.8, 2.5) / self.gsd),
            edge,
            z=Z_POND_EDGE,
            texture=(0.12, 0.10, 0.05, 0.0),
        )
        colour = self.jitter((rng.uniform(48, 72), rng.uniform(60, 82), rng.uniform(38, 56)), 0.05)
        self.ground.add(water_px, colour, z=Z_POND, texture=(0.12, 0.05, 0.02, 0.0))
        self.distractor(water_px, "pond")
        return water

    # ---- after the layout: occlusion and the passes
    def finish(self) -> tuple[list[Pass], list[tuple[_Pool, float]]]:
        """Thin canopies so no pool is more than `MAX_OCCLUSION` hidden; freeze the passes.

        Returns the passes in drawing order and each pool with its hidden fraction.
        """
        canopies = np.empty(len(self.trees), dtype=object)
        canopies[:] = [t.canopy for t in self.trees]
        keep = np.ones(len(canopies), dtype=bool)
        index = shapely.STRtree(canopies)
        # Every pool of the layout, drawn or not, so each vintage keeps the same trees.
        for outline in self.placed:
            hits = index.query(outline, predicate="intersects")
            # Drop the trees covering most of the pool first until enough of it shows.
            hits = hits[np.argsort(-shapely.area(shapely.intersection(canopies[hits], outline)))]
            while _hidden(outline, canopies[hits[keep[hits]]]) > MAX_OCCLUSION - 0.02:
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
