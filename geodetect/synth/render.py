"""Drawing the scene: noise textures over absolute pixels, passes of painted or shaded
objects, and the renderer that turns any window into pixels that agree at every seam."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import shapely
from affine import Affine
from rasterio.features import rasterize
from shapely.geometry import box

HALO = 2  # pixels rendered around a window so the blur has real neighbours
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


class Textures:
    """Deterministic noise over absolute pixel coordinates, at scales set in metres."""

    def __init__(self, seed: int, gsd: float) -> None:
        self.seed = seed
        self.octaves = [[(max(m / gsd, 1.0), w) for m, w in field] for field in _FIELD_OCTAVES]
        self.illumination_scale = max(_ILLUMINATION_M / gsd, 1.0)
        rng = np.random.default_rng([seed, 7])
        period = 509  # white sensor noise repeats every 509 px: invisible, and cheap
        sensor = rng.normal(0.0, 1.0, size=(period, period, 4)).astype(np.float32)
        self.sensor = np.ascontiguousarray(sensor.transpose(2, 0, 1))  # [4, period, period]

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
        """float32 [3, h, w]: unit white noise, one shared luminance part plus colour."""
        p = self.sensor.shape[1]
        rows = np.arange(row0, row0 + height) % p
        cols = np.arange(col0, col0 + width) % p
        block = self.sensor[:, rows][:, :, cols]
        return 0.8 * block[:1] + 0.6 * block[1:]


# --------------------------------------------------------------------------- render passes


@dataclass(frozen=True)
class Pass:
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


class PassBuilder:
    def __init__(self, *, shade: bool = False) -> None:
        self.shade = shade
        self.items: list[tuple] = []

    def add(self, geom, rgb, *, z: int = 0, texture=(0.0, 0.0, 0.0, 0.0), gradient=None):
        if geom is None or geom.is_empty or geom.area <= 0:
            return
        self.items.append((z, len(self.items), geom, rgb, texture, gradient or _NO_GRADIENT))

    def freeze(self) -> Pass:
        items = sorted(self.items, key=lambda item: (item[0], item[1]))
        geoms = np.empty(len(items), dtype=object)
        geoms[:] = [item[2] for item in items]
        gradient = np.array([item[5] for item in items], dtype=np.float32).reshape(-1, 7)
        return Pass(
            shade=self.shade,
            geoms=geoms,
            rgb=np.array([item[3] for item in items], dtype=np.float32).reshape(-1, 3),
            texture=np.array([item[4] for item in items], dtype=np.float32).reshape(-1, _N_FIELDS),
            gradient=gradient,
            has_gradient=np.any(gradient[:, 5:] != 0, axis=1),
            tree=shapely.STRtree(geoms),
        )


# --------------------------------------------------------------------------- shapes


class Renderer:
    """Draws any window of the scene from the frozen passes; windows agree at their seams."""

    def __init__(self, passes: Sequence[Pass], textures: Textures) -> None:
        self.passes = passes
        self.textures = textures

    def window(self, row0: int, col0: int, height: int, width: int) -> np.ndarray:
        """uint8 [3, height, width]: the scene's pixels in that window, bands first."""
        r0, c0 = row0 - HALO, col0 - HALO
        h, w = height + 2 * HALO, width + 2 * HALO
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
        return camera(np.ascontiguousarray(canvas.transpose(2, 0, 1)), self.textures, row0, col0)


def camera(canvas: np.ndarray, textures: Textures, row0: int, col0: int) -> np.ndarray:
    """What the camera makes of the ground: float32 [3, h + 2 HALO, w + 2 HALO] radiance of
    the window at ``(row0, col0)`` with its `HALO`-pixel border in -> uint8 [3, h, w] out.

    Bands first: every step below then runs along whole rows, several times faster
    than over pixel triplets."""
    h, w = canvas.shape[1], canvas.shape[2]
    canvas *= 1.0 + 0.05 * textures.illumination(row0 - HALO, col0 - HALO, h, w)
    # Slight optical blur, then haze and sensor noise as a real camera adds them.
    canvas = sum(k * canvas[:, i : i + h - 4] for i, k in enumerate(_BLUR))
    canvas = sum(k * canvas[:, :, i : i + w - 4] for i, k in enumerate(_BLUR))
    grey = canvas.mean(axis=0, keepdims=True)
    canvas = (grey + 0.9 * (canvas - grey)) * 0.93 + 9.0  # a little haze
    canvas += 2.5 * textures.sensor_noise(row0, col0, h - 2 * HALO, w - 2 * HALO)
    return np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
