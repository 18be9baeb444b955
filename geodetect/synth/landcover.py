"""Pool-free land cover for a synthetic county (crop fields, forest, lakes and a river,
section-line roads, dense town roofs), rendered window by window from absolute pixels."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from geodetect.synth.objects import _BLUE_ROOFS, _ROOF_COLOURS, _TREE_SHADOW, SHADOW
from geodetect.synth.render import HALO, Textures, _hash01, _value_noise, camera

FIELDS, FOREST, WATER, URBAN = "fields", "forest", "water", "urban"
KINDS = (FIELDS, FOREST, WATER, URBAN)  # land-cover tiles: never a pool
SUBURB = "suburb"  # a tile the suburb generator draws (with pools); not drawn here

_SECTION_M = 1609.344  # US section-line roads run a mile apart, north-south and east-west
_FIELD_ROW_M = 200.0  # depth of one row of fields; field widths vary along the row
_CROWN_CELL_M = 5.0  # one candidate tree crown per 5 m cell
_TREE_HEIGHT_M = 16.0  # the crown height that sets the length of canopy shadows
_GRASS = (92.0, 108.0, 62.0)

# Crops: colour, row spacing in metres (0: rows finer than a pixel), row contrast,
# tramlines (tractor wheel tracks of cereals), weight. Rows show at 0.2 m, as they do.
_CROPS = (
    ((62, 92, 46), 0.76, 0.12, False, 0.16),  # maize
    ((84, 120, 58), 0.76, 0.10, False, 0.16),  # soybean
    ((176, 156, 104), 0.0, 0.0, True, 0.12),  # ripe wheat
    ((96, 126, 70), 0.0, 0.0, True, 0.10),  # young cereal
    ((132, 110, 84), 0.9, 0.14, False, 0.12),  # tilled soil
    ((96, 80, 64), 1.2, 0.18, False, 0.08),  # ploughed
    ((120, 132, 80), 6.0, 0.05, False, 0.14),  # hay, mown in swaths
    ((72, 104, 52), 1.5, 0.08, False, 0.12),  # sugar cane
)
_CROP_RGB = np.array([c[0] for c in _CROPS], dtype=np.float32).T  # [3, n]: bands first
_CROP_SPACING = np.array([c[1] or 1.0 for c in _CROPS], dtype=np.float32)
_CROP_CONTRAST = np.array([c[2] for c in _CROPS], dtype=np.float32)
_CROP_TRAMS = np.array([c[3] for c in _CROPS])
_CROP_CUMULATIVE = np.cumsum([c[4] for c in _CROPS]) / sum(c[4] for c in _CROPS)

_CROWN_RGB = np.array(
    [(52, 78, 40), (66, 92, 46), (40, 60, 38), (84, 100, 52), (74, 86, 44), (58, 84, 50)],
    dtype=np.float32,
).T
_FOREST_FLOOR = (50.0, 58.0, 36.0)

_ROOF_RGB = np.array([rgb for rgb, _ in _ROOF_COLOURS], dtype=np.float32).T
_ROOF_CUMULATIVE = np.cumsum([w for _, w in _ROOF_COLOURS]) / sum(w for _, w in _ROOF_COLOURS)
_BLUE_RGB = np.array(_BLUE_ROOFS, dtype=np.float32).T
_BLUE_ROOF_SHARE = 0.06  # painted metal roofs a detector may read as water
_FLAT_RGB = np.array([(64, 64, 66), (214, 214, 208), (150, 150, 146)], dtype=np.float32).T
_ASPHALT = (86.0, 86.0, 84.0)
_SIDEWALK = (176.0, 174.0, 166.0)
_GRAVEL = (150.0, 140.0, 118.0)


# --------------------------------------------------------------------------- small tools


@dataclass(frozen=True)
class _Window:
    """A window of the mosaic's pixel grid; ``x``/``y`` are metres east/south of the
    mosaic's upper-left corner at pixel centres."""

    row0: int
    col0: int
    height: int
    width: int
    gsd: float

    @property
    def x(self) -> np.ndarray:
        """float32 [1, width]."""
        cols = np.arange(self.col0, self.col0 + self.width, dtype=np.float64)
        return ((cols + 0.5) * self.gsd).astype(np.float32)[None, :]

    @property
    def y(self) -> np.ndarray:
        """float32 [height, 1]."""
        rows = np.arange(self.row0, self.row0 + self.height, dtype=np.float64)
        return ((rows + 0.5) * self.gsd).astype(np.float32)[:, None]

    def grown(self, margin: int) -> _Window:
        return _Window(
            self.row0 - margin,
            self.col0 - margin,
            self.height + 2 * margin,
            self.width + 2 * margin,
            self.gsd,
        )

    def noise(self, metres: float, salt: int) -> np.ndarray:
        """float32 [height, width]: value noise in [-1, 1], features ``metres`` apart."""
        scale = max(metres / self.gsd, 1.0)
        return _value_noise(self.row0, self.col0, self.height, self.width, scale, salt)


def _cell_values(i: np.ndarray, j: np.ndarray, salt: int, n: int) -> np.ndarray:
    """float32 [n, ...]: ``n`` uniform [0, 1) numbers per integer cell ``(i, j)``.

    ``i`` and ``j`` broadcast together; the hashes are taken once per cell of the
    window (a small table) and looked up per pixel, which is far cheaper than hashing
    every pixel.
    """
    i0, j0 = int(i.min()), int(j.min())
    ti = np.arange(i0, int(i.max()) + 1)[:, None]
    tj = np.arange(j0, int(j.max()) + 1)[None, :]
    table = np.stack([_hash01(ti, tj, salt + 7919 * k) for k in range(n)])
    return table[:, i - i0, j - j0]


def _pick(cumulative: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Index into a table with cumulative weights for uniform draws ``u``."""
    return np.minimum(np.searchsorted(cumulative, u), len(cumulative) - 1)


def _colour(rgb) -> np.ndarray:
    """float32 [3, 1, 1]: a colour that broadcasts over a bands-first canvas."""
    return np.asarray(rgb, dtype=np.float32).reshape(3, 1, 1)


_DEEP_WATER = _colour((26, 50, 60))
_SHALLOW_WATER = _colour((70, 86, 66))


def _crop(grown: np.ndarray, margin: int) -> np.ndarray:
    """The window's part of an array [..., H, W] made for the window grown by ``margin``."""
    return grown[..., margin : grown.shape[-2] - margin, margin : grown.shape[-1] - margin]


def _shifted(grown: np.ndarray, margin: int, offset: tuple[int, int]) -> np.ndarray:
    """The grown array's values at ``pixel - offset`` for every pixel of the window."""
    dr, dc = offset
    h, w = grown.shape[-2] - 2 * margin, grown.shape[-1] - 2 * margin
    return grown[..., margin - dr : margin - dr + h, margin - dc : margin - dc + w]


@dataclass(frozen=True)
class _TileLook:
    """What one land-cover tile looks like, drawn once from the seed and the tile index."""

    kind: str
    land: str  # what a water tile's shore is: fields or forest
    field_angle: float  # radians; fields follow the survey grid, mostly
    margin_m: float  # width of the grass margins between fields
    town_angle: float
    block_m: tuple[float, float]  # town block pitch along u and v
    street_m: float
    building_m: float  # building height, for roof shadows
    wind: tuple[float, float]  # unit vector across the ripples on water


@dataclass(frozen=True)
class _River:
    """The county's river: its axis, and two sine bends (amplitude, wavelength) about it."""

    along_y: bool  # flows north-south (else east-west)
    centre_m: float  # where its axis lies across the flow, metres from the mosaic's edge
    bends: tuple[tuple[float, float], ...]
    phases: tuple[float, ...]
    width_m: float


def _tile_look(seed: int, row: int, col: int, kind: str) -> _TileLook:
    rng = np.random.default_rng([seed, 31, row, col])
    field_angle = 0.0 if rng.random() < 0.6 else math.radians(rng.uniform(-10, 10))
    town_angle = 0.0 if rng.random() < 0.5 else math.radians(rng.uniform(-20, 20))
    wind = rng.uniform(0, 2 * math.pi)
    return _TileLook(
        kind=kind,
        land=FIELDS if rng.random() < 0.5 else FOREST,
        field_angle=field_angle,
        margin_m=float(rng.uniform(1.5, 4.0)),
        town_angle=town_angle,
        block_m=(float(rng.uniform(90, 130)), float(rng.uniform(60, 84))),
        street_m=float(rng.uniform(11, 15)),
        building_m=float(rng.uniform(5, 10)),
        wind=(math.cos(wind), math.sin(wind)),
    )


# --------------------------------------------------------------------------- land cover


class LandCover:
    """Renders the pool-free tiles of a mosaic from absolute pixel coordinates.

    The mosaic is a grid of ``kinds`` tiles, ``tile_px`` pixels square, at ``gsd``
    metres per pixel; tile kinds are those in `KINDS`, or `SUBURB` for tiles drawn
    elsewhere (those pixels render here as plain grass and should not be written from
    here). A river and section-line roads run across all land-cover tiles. Every pixel
    is a pure function of the seed and its position, so any window, in any order,
    agrees with its neighbours at the seams.

    Args:
        seed: the land cover is a pure function of it.
        gsd: ground sample distance, metres per pixel.
        kinds: ``kinds[row][col]``, the kind of each tile, rows north to south.
        tile_px: side of one tile in pixels.
    """

    def __init__(self, seed: int, gsd: float, kinds, tile_px: int) -> None:
        self.seed = int(seed)
        self.gsd = float(gsd)
        self.kinds = np.asarray(kinds, dtype=object)
        self.tile_px = int(tile_px)
        self.textures = Textures(self.seed, self.gsd)
        self.looks = {
            (r, c): _tile_look(self.seed, r, c, str(self.kinds[r, c]))
            for r in range(self.kinds.shape[0])
            for c in range(self.kinds.shape[1])
        }
        rng = np.random.default_rng([self.seed, 30])
        # One flight: the same sun everywhere (shadows roughly north, as in the suburbs).
        azimuth = math.radians(rng.uniform(-60, 60))
        self.shadow_dir = (math.sin(azimuth), -math.cos(azimuth))  # x east, y south
        self.sun = (-self.shadow_dir[0], -self.shadow_dir[1])
        self.shadow_per_m = float(rng.uniform(0.25, 0.6))  # metres of shadow per metre
        span_y = self.kinds.shape[0] * tile_px * gsd
        span_x = self.kinds.shape[1] * tile_px * gsd
        self.section_offset = (float(rng.uniform(0, _SECTION_M)), float(rng.uniform(0, _SECTION_M)))
        angle = rng.uniform(math.radians(25), math.radians(65)) * rng.choice([-1, 1])
        self.highway = (
            span_x * float(rng.uniform(0.3, 0.7)),
            span_y * float(rng.uniform(0.3, 0.7)),
            math.cos(angle),
            math.sin(angle),
        )
        # The river meanders north-south or east-west across the middle of the county.
        along_y = bool(rng.random() < 0.5)
        self.river = _River(
            along_y=along_y,
            centre_m=(span_x if along_y else span_y) * float(rng.uniform(0.25, 0.75)),
            bends=(
                (float(rng.uniform(150, 400)), float(rng.uniform(2000, 4000))),
                (float(rng.uniform(30, 80)), float(rng.uniform(600, 900))),
            ),
            phases=(float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0, 2 * math.pi))),
            width_m=float(rng.uniform(20, 45)),
        )

    def _salt(self, k: int) -> int:
        return (self.seed * 1_000_003 + 5_000_011 + k * 104_729) & 0xFFFFFFFF

    def _shadow_px(self, height_m: float) -> tuple[int, int]:
        """The (row, col) pixel offset of the shadow of something ``height_m`` tall."""
        length = height_m * self.shadow_per_m / self.gsd
        return round(self.shadow_dir[1] * length), round(self.shadow_dir[0] * length)

    # ---- the public face: the same as the suburb's `Renderer`
    def window(self, row0: int, col0: int, height: int, width: int) -> np.ndarray:
        """uint8 [3, height, width]: the mosaic's land-cover pixels in that window."""
        win = _Window(row0 - HALO, col0 - HALO, height + 2 * HALO, width + 2 * HALO, self.gsd)
        canvas = np.empty((3, win.height, win.width), dtype=np.float32)
        # Split the window at tile edges: every part is drawn with its own tile's look.
        t = self.tile_px
        rows = range(win.row0 // t, (win.row0 + win.height - 1) // t + 1)
        cols = range(win.col0 // t, (win.col0 + win.width - 1) // t + 1)
        for tr in rows:
            r0, r1 = max(win.row0, tr * t), min(win.row0 + win.height, (tr + 1) * t)
            for tc in cols:
                c0, c1 = max(win.col0, tc * t), min(win.col0 + win.width, (tc + 1) * t)
                part = _Window(r0, c0, r1 - r0, c1 - c0, self.gsd)
                canvas[:, r0 - win.row0 : r1 - win.row0, c0 - win.col0 : c1 - win.col0] = (
                    self._tile_canvas(part, tr, tc)
                )
        return camera(canvas, self.textures, row0, col0)

    def _tile_canvas(self, win: _Window, row: int, col: int) -> np.ndarray:
        """float32 [3, h, w]: the ground of one tile's part of a window, before the camera."""
        look = self.looks.get((row, col))
        if look is None or look.kind == SUBURB:
            # Beyond the mosaic, or a suburb: only ever seen by the blur's halo.
            return np.broadcast_to(_colour(_GRASS), (3, win.height, win.width))
        if look.kind == URBAN:
            return self.urban(win, look)
        if look.kind == FOREST:
            rgb = self.forest(win)
        elif look.kind == FIELDS:
            rgb = self.fields(win, look)
        else:
            rgb = self.lake(win, look, row, col)
        rgb = self.river_over(win, rgb)
        return self.roads_over(win, rgb)

    # ---- crop fields
    def fields(self, win: _Window, look: _TileLook) -> np.ndarray:
        """Fields in rows of varying widths, crops in rows or with tramlines, grass
        margins with shrubs between them, and a few woodlots."""
        x, y = win.x, win.y
        ca, sa = math.cos(look.field_angle), math.sin(look.field_angle)
        u = x * ca + y * sa
        v = y * ca - x * sa
        j = np.floor(v / _FIELD_ROW_M).astype(np.int32)
        width, offset = _cell_values(j, np.zeros_like(j), self._salt(1), 2)
        field_w = 110.0 + 250.0 * width
        us = u + offset * field_w  # fields of one row do not line up with the next
        i = np.floor(us / field_w).astype(np.int32)
        a = us - i.astype(np.float32) * field_w
        b = v - j.astype(np.float32) * _FIELD_ROW_M
        edge = np.minimum(np.minimum(a, field_w - a), np.minimum(b, _FIELD_ROW_M - b))
        which, tint, turn = _cell_values(i, j, self._salt(2), 3)
        crop = _pick(_CROP_CUMULATIVE, which)
        across = np.where(turn < 0.5, u, v)
        stripes = np.cos((2 * np.pi) * across / _CROP_SPACING[crop])
        tram = across % 24.0
        tracks = _CROP_TRAMS[crop] & ((np.abs(tram - 11.1) < 0.25) | (np.abs(tram - 12.9) < 0.25))
        coarse = win.noise(25.0, self._salt(3))
        medium = win.noise(2.0, self._salt(4))
        light = 1.0 + _CROP_CONTRAST[crop] * stripes + 0.07 * coarse + 0.04 * medium
        light -= 0.2 * tracks
        light *= 0.92 + 0.16 * tint
        margin = edge < look.margin_m
        # Grass margins, darker where shrubs grow in them.
        light = np.where(
            margin,
            np.where(medium > 0.35, np.float32(0.6), np.float32(1.0)) * (1.0 + 0.1 * medium),
            light,
        )
        rgb = np.where(margin, _colour(_GRASS), _CROP_RGB[:, crop]) * light

        def woodlots(cells: _Window) -> np.ndarray:
            return np.where(cells.noise(220.0, self._salt(5)) > 0.55, 0.9, 0.0)

        return self.canopy(win, woodlots, rgb)

    # ---- forest
    def forest(self, win: _Window) -> np.ndarray:
        """Clumped crowns of several greens with a dark floor, meadows in clearings."""
        clearing = win.noise(90.0, self._salt(7)) < -0.45
        light = np.where(
            clearing,
            1.0 + 0.08 * win.noise(6.0, self._salt(8)),
            1.0 + 0.12 * win.noise(1.5, self._salt(6)),
        )
        ground = np.where(clearing, _colour(_GRASS), _colour(_FOREST_FLOOR)) * light

        def density(cells: _Window) -> np.ndarray:
            dens = 0.78 + 0.35 * cells.noise(40.0, self._salt(9))
            return np.where(cells.noise(90.0, self._salt(7)) < -0.45, 0.03, dens)

        return self.canopy(win, density, ground)

    def canopy(
        self,
        win: _Window,
        density: Callable[[_Window], np.ndarray],
        ground: np.ndarray,
    ) -> np.ndarray:
        """Tree crowns over ``ground`` (float32 [3, h, w]) with their shadows.

        ``density(cells)`` gives, for a window of the crown lattice (one "pixel" per
        crown cell of about `_CROWN_CELL_M`, ``x``/``y`` at cell centres), the chance that
        the cell holds a tree: a crown is there or not as a whole, never cut by a boundary.
        """
        shift = self._shadow_px(_TREE_HEIGHT_M)
        half = (shift[0] // 2, shift[1] // 2)
        margin = max(abs(shift[0]), abs(shift[1])) + 1
        grown = win.grown(margin)
        # Whole cells of `cp` pixels cover the grown window: an array [cell row, pixel row,
        # cell col, pixel col] lets each cell's values broadcast over its pixels without
        # a gather, and most of the sums stay at a cell's row or column.
        cp = max(2, round(_CROWN_CELL_M / self.gsd))
        cell = cp * self.gsd
        j_first, i_first = grown.row0 // cp, grown.col0 // cp
        nj = (grown.row0 + grown.height - 1) // cp - j_first + 1
        ni = (grown.col0 + grown.width - 1) // cp - i_first + 1
        dens = density(_Window(j_first - 1, i_first - 1, nj + 2, ni + 2, cell))
        if not (dens > 0).any():
            return ground
        tj = np.arange(j_first - 1, j_first + nj + 1)[:, None]
        ti = np.arange(i_first - 1, i_first + ni + 1)[None, :]
        jx, jy, size, tone, chance = (_hash01(tj, ti, self._salt(20 + k)) for k in range(5))
        lift = np.where(chance < dens, 1.0, -1.0).astype(np.float32)  # -1: no tree there
        radius = cell * (0.45 + 0.4 * size)
        local = ((np.arange(cp) + 0.5) * self.gsd).astype(np.float32)
        best = np.zeros((nj, cp, ni, cp), np.float32)
        lit = np.zeros_like(best)
        colour = np.zeros_like(best)
        sx, sy = (np.float32(s) for s in self.sun)

        def per_cell(values: np.ndarray) -> np.ndarray:
            return values[:, None, :, None]

        for dj in (-1, 0, 1):
            for di in (-1, 0, 1):
                near = (slice(1 + dj, 1 + dj + nj), slice(1 + di, 1 + di + ni))
                dx = local - per_cell((di + 0.15 + 0.7 * jx[near]) * cell)  # [nj,1,ni,cp]
                dy = local[:, None, None] - per_cell((dj + 0.15 + 0.7 * jy[near]) * cell)
                r = per_cell(radius[near])
                top = (per_cell(lift[near]) - dx * dx / (r * r)) - dy * dy / (r * r)
                higher = top > best
                best = np.maximum(best, top)
                lit = np.where(higher, dx * (sx / r) + dy * (sy / r), lit)
                colour = np.where(higher, per_cell(tone[near]), colour)
        r_off, c_off = grown.row0 - j_first * cp, grown.col0 - i_first * cp
        best, lit, colour = (
            a.reshape(nj * cp, ni * cp)[r_off : r_off + grown.height, c_off : c_off + grown.width]
            for a in (best, lit, colour)
        )
        # A lower crown (or the ground) is in shade where a higher one stands sunward;
        # two samples along the sun's direction join a tree's shadow to its foot.
        own = _crop(best, margin) + 0.25
        shade = (_shifted(best, margin, shift) > own) | (_shifted(best, margin, half) > own)
        best, lit, colour = (_crop(a, margin) for a in (best, lit, colour))
        crown = best > 0
        leaves = win.noise(0.7, self._salt(10))
        light = 0.72 + 0.3 * lit + 0.25 * np.sqrt(np.maximum(best, 0.0)) + 0.15 * leaves
        tones = (colour * _CROWN_RGB.shape[1]).astype(np.int32) % _CROWN_RGB.shape[1]
        rgb = np.where(crown, _CROWN_RGB[:, tones] * light, ground)
        return np.where(shade, rgb * _colour(_TREE_SHADOW), rgb)

    # ---- water
    def _water(self, win: _Window, depth: np.ndarray, wind: tuple[float, float]) -> np.ndarray:
        """Open water, dark blue-green, greener in the shallows, with wind ripples."""
        x, y = win.x, win.y
        phase = (x * wind[0] + y * wind[1]) * np.float32(2 * np.pi / 1.3)
        ripples = np.sin(phase + 2.5 * win.noise(6.0, self._salt(11)))
        gust = 0.5 + 0.5 * win.noise(60.0, self._salt(12))
        light = 1.0 + 0.06 * gust * ripples + 0.04 * win.noise(30.0, self._salt(13))
        return (_SHALLOW_WATER + (_DEEP_WATER - _SHALLOW_WATER) * depth) * light

    def lake(self, win: _Window, look: _TileLook, row: int, col: int) -> np.ndarray:
        """A lake filling much of the tile, with a sandy or reedy shore, in fields or forest."""
        span = self.tile_px * self.gsd
        cx, cy = (col + 0.5) * span, (row + 0.5) * span
        r2 = ((win.x - cx) ** 2 + (win.y - cy) ** 2) / (0.5 * span) ** 2
        level = (
            0.8 * win.noise(300.0, self._salt(14))
            + 0.25 * win.noise(90.0, self._salt(15))
            + 0.6
            - 0.9 * r2
        )
        if (level > 0).all():  # open water: no land to draw under it
            return self._water(win, np.clip(level / 0.35, 0.0, 1.0), look.wind)
        land = self.fields(win, look) if look.land == FIELDS else self.forest(win)
        if not (level > -0.06).any():
            return land
        water = self._water(win, np.clip(level / 0.35, 0.0, 1.0), look.wind)
        reeds = win.noise(25.0, self._salt(16)) > 0
        shore = np.where(reeds, _colour((84, 98, 56)), _colour((150, 138, 104)))
        return np.where(level > 0, water, np.where(level > -0.06, shore, land))

    def river_over(self, win: _Window, rgb: np.ndarray) -> np.ndarray:
        """The county's meandering river and its muddy banks over ``rgb``."""
        river = self.river
        along, across = (win.y, win.x) if river.along_y else (win.x, win.y)
        centre, slope = np.float32(river.centre_m), np.float32(0.0)
        for (amplitude, wavelength), phase in zip(river.bends, river.phases, strict=True):
            k = 2 * np.pi / wavelength
            centre = centre + amplitude * np.sin(k * along + phase)
            slope = slope + amplitude * k * np.cos(k * along + phase)
        # Distance across the channel, not along the axis: bends stay as wide as reaches.
        dist = np.abs(across - centre) / np.sqrt(1.0 + slope * slope)
        width = river.width_m
        if not (dist < width / 2 + 4.0).any():
            return rgb
        depth = np.clip(1.0 - dist / (width / 2), 0.0, 1.0)
        wind = (0.0, 1.0) if river.along_y else (1.0, 0.0)
        rgb = np.where(dist < width / 2 + 4.0, _colour((128, 116, 86)), rgb)  # muddy banks
        return np.where(dist < width / 2, self._water(win, depth, wind), rgb)

    # ---- roads
    def roads_over(self, win: _Window, rgb: np.ndarray) -> np.ndarray:
        """Section-line county roads (two lanes, a mile apart) and one divided highway."""
        x, y = win.x, win.y
        gsd = self.gsd

        def cover(inside_m):
            """Anti-aliased coverage of a band from its signed inner distance (metres)."""
            return np.clip(0.5 + inside_m / gsd, 0.0, 1.0)

        def paint(rgb, dist, half_m, colour):
            if (dist < half_m + gsd).any():
                rgb = rgb + (colour - rgb) * cover(half_m - dist)
            return rgb

        ox, oy = self.section_offset
        dx = np.abs(x - ox - np.round((x - ox) / _SECTION_M) * _SECTION_M)  # [1, w]
        dy = np.abs(y - oy - np.round((y - oy) / _SECTION_M) * _SECTION_M)  # [h, 1]
        hx, hy, ux, uy = self.highway
        dh = np.abs((x - hx) * -uy + (y - hy) * ux)
        if not ((dx < 14).any() or (dy < 14).any() or (dh < 30).any()):
            return rgb
        asphalt = _colour(_ASPHALT) * (1.0 + 0.05 * win.noise(3.0, self._salt(17)))
        grass, gravel = _colour(_GRASS), _colour(_GRAVEL)
        for dist, dashed in ((dx, (y % 12.0) < 3.0), (dy, (x % 12.0) < 3.0)):
            if not (dist < 14).any():
                continue
            rgb = paint(rgb, dist, 9.0, grass)  # verge: the trees are cut back
            rgb = paint(rgb, dist, 5.0, gravel)
            rgb = rgb + (asphalt - rgb) * cover(3.6 - dist)
            rgb = paint(rgb, np.abs(dist - 3.3), 0.08, _colour((214, 214, 208)))
            rgb = paint(rgb, np.where(dashed, dist, 99.0), 0.08, _colour((204, 172, 64)))
        if (dh < 30).any():
            rgb = paint(rgb, dh, 20.0, grass)
            rgb = paint(rgb, dh, 13.0, gravel)
            concrete = np.float32(1.6) * asphalt
            rgb = rgb + (concrete - rgb) * (cover(11.5 - dh) * (1.0 - cover(4.0 - dh)))
            along = (x - hx) * ux + (y - hy) * uy
            lane = np.where(along % 12.0 < 3.0, np.abs(dh - 7.75), 99.0)
            rgb = paint(rgb, lane, 0.08, _colour((220, 220, 214)))
        return rgb

    # ---- dense town
    def urban(self, win: _Window, look: _TileLook) -> np.ndarray:
        """A town centre: streets with sidewalks, blocks of terraced or detached roofs of
        many colours (a few blue), flat-roofed stores with parking, small parks; no pools."""
        shift = self._shadow_px(look.building_m)
        margin = max(abs(shift[0]), abs(shift[1])) + 1
        grown = win.grown(margin)
        ca, sa = math.cos(look.town_angle), math.sin(look.town_angle)
        pitch_u, pitch_v = look.block_m
        span_u, span_v = pitch_u - look.street_m, pitch_v - look.street_m

        def blocks(w: _Window):
            """Block cell, position in the block (0 <= a < span_u inside) and block type."""
            u = w.x * ca + w.y * sa
            v = w.y * ca - w.x * sa
            i = np.floor(u / pitch_u).astype(np.int32)
            j = np.floor(v / pitch_v).astype(np.int32)
            a = u - i.astype(np.float32) * pitch_u - look.street_m / 2
            b = v - j.astype(np.float32) * pitch_v - look.street_m / 2
            return i, j, a, b

        i, j, a, b = blocks(grown)
        street = (a < 0) | (a >= span_u) | (b < 0) | (b >= span_v)
        kind, lot_share, gap_share, set_share, depth_share = _cell_values(i, j, self._salt(30), 5)
        store = (kind >= 0.78) & (kind < 0.9)
        park = kind >= 0.9
        # Houses: two rows back to back, each fronting its street.
        back = b >= span_v / 2
        front = np.where(back, span_v - b, b)  # metres from the row's street
        lot_w = 7.0 + 8.0 * lot_share
        k = np.floor(a / lot_w).astype(np.int32)
        along = a - k.astype(np.float32) * lot_w
        gap = np.where(gap_share < 0.4, 0.0, 1.0 + 2.0 * gap_share)  # terraced or detached
        setback = 1.0 + 3.0 * set_share
        depth = (span_v / 2 - setback) * (0.55 + 0.4 * depth_share)
        house = (
            ~street
            & (kind < 0.78)
            & (along > gap / 2)
            & (along < lot_w - gap / 2)
            & (front > setback)
            & (front < setback + depth)
        )
        shop = ~street & store & (a > 5) & (a < span_u - 5) & (b > 5) & (b < 0.6 * span_v)
        roof = house | shop
        shadow = _shifted(roof, margin, shift) & ~_crop(roof, margin)
        lot = _cell_values(i * 2 + back, j * 64 + k, self._salt(31), 4)
        (a, b, front, along, lot_w, gap, setback, depth, street, store, park, house, shop,
         back, lot) = (_crop(t, margin) for t in (a, b, front, along, lot_w, gap, setback,
                                                    depth, street, store, park, house, shop,
                                                    back, lot))  # fmt: skip

        fine = win.noise(0.6, self._salt(32))
        coarse = win.noise(12.0, self._salt(33))
        # Ground: yards of lawn and paving, streets with sidewalks, parking with stalls.
        to_block = np.minimum(
            np.minimum(np.abs(a), np.abs(a - span_u)), np.minimum(np.abs(b), np.abs(b - span_v))
        )
        walk = street & (to_block < 2.0)
        paved = (coarse > 0.2) & ~park
        parking = ~street & store & ~shop
        stalls = parking & ((a % 2.7) < 0.14) & (b > 0.6 * span_v + 2) & (b < span_v - 2)
        ground = np.where(paved, _colour((168, 160, 146)), _colour(_GRASS))
        ground = np.where(street | parking, _colour(_ASPHALT), ground)
        ground = np.where(walk, _colour(_SIDEWALK), ground)
        ground = np.where(stalls, _colour((210, 210, 204)), ground)

        # Roofs: colours from the suburb's palette and a few blue ones; gable, hip or flat.
        blue = lot[0] < _BLUE_ROOF_SHARE
        style = np.minimum((lot[2] * 4).astype(np.int32), 3)  # gable u, gable v, hip, flat
        colour = np.where(
            blue,
            _BLUE_RGB[:, (lot[1] * _BLUE_RGB.shape[1]).astype(np.int32) % _BLUE_RGB.shape[1]],
            np.where(
                style == 3,
                _FLAT_RGB[:, (lot[3] * _FLAT_RGB.shape[1]).astype(np.int32) % 3],
                _ROOF_RGB[:, _pick(_ROOF_CUMULATIVE, lot[1])],
            ),
        )
        # Facet normals in the (u, v) frame; the sign of v follows the row's facing.
        mid_along = along - lot_w / 2
        mid_front = front - setback - depth / 2
        to_side = lot_w / 2 - gap / 2 - np.abs(mid_along)
        to_eave = depth / 2 - np.abs(mid_front)
        facing = np.where(back, np.float32(-1.0), np.float32(1.0))
        hip = style == 2
        nu = np.where((style == 1) | (hip & (to_side < to_eave)), np.sign(mid_along), 0.0)
        nv = np.where((style == 0) | (hip & (to_side >= to_eave)), np.sign(mid_front), 0.0)
        sun_u = self.sun[0] * ca + self.sun[1] * sa
        sun_v = self.sun[1] * ca - self.sun[0] * sa
        facet = 1.0 + 0.2 * (nu * sun_u + nv * facing * sun_v)
        facet = np.where((style == 3) & (np.minimum(to_side, to_eave) < 0.35), 0.82, facet)

        light = np.where(
            house,
            facet + 0.05 * fine,
            np.where(shop, 1.0 + 0.03 * fine + 0.04 * coarse, 1.0 + 0.1 * coarse + 0.05 * fine),
        )
        rgb = np.where(house, colour, np.where(shop, _colour((196, 196, 192)), ground)) * light
        rgb = np.where(shadow, rgb * _colour(SHADOW), rgb)

        def trees(cells: _Window) -> np.ndarray:
            ci, cj, ca_, cb_ = blocks(cells)
            in_park = _cell_values(ci, cj, self._salt(30), 1)[0] >= 0.9
            inside = (ca_ > 3) & (ca_ < span_u - 3) & (cb_ > 3) & (cb_ < span_v - 3)
            return np.where(in_park & inside, 0.4, 0.0)

        return self.canopy(win, trees, rgb)
