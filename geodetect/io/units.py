"""Pixel sizes in metres, whatever unit the raster's CRS counts in (metres, feet, degrees),
and the UTM zone in which degrees are read or measured."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from affine import Affine
from pyproj import CRS, Geod, Proj, Transformer

from geodetect.errors import InputError

# Projections whose scale at the raster is within this of 1 count in nominal metres.
NOMINAL_SCALE = 0.01


def gsd_metres(crs: Any, transform: Affine, width: int, height: int) -> float | None:
    """Ground sample distance of a raster in metres: the longer side of one pixel.

    Projected (and other linear) CRSs scale the pixel size by their unit's length in
    metres (0.3048006 for US survey feet) and divide it by the projection's scale at
    the raster's centre (:func:`map_scale`) where that is more than
    :data:`NOMINAL_SCALE` off 1: ground metres, so a 0.3 m Web Mercator pixel at 45 N
    is 0.21 m; UTM and state planes (within 0.1 % of 1) keep their nominal metres.
    Geographic CRSs measure the pixel at the raster's centre on the
    CRS's ellipsoid, so 1e-5 degrees of longitude is about 0.85 m at 40 N and 1.1 m
    at the equator.

    Args:
        crs: a rasterio or pyproj CRS, or anything ``pyproj.CRS.from_user_input``
            takes; None when the raster has none.
        transform: pixel (col, row) -> CRS (x, y), x being easting or longitude.
        width, height: raster size in pixels; the centre pixel is measured.

    Returns:
        The pixel size in metres, or None without a CRS or when the CRS's unit is
        not a length or an angle (or the centre is not on the globe).
    """
    if crs is None:
        return None
    crs = CRS.from_user_input(crs)
    if not crs.axis_info:
        return None
    unit = crs.axis_info[0]
    if crs.is_geographic:
        return _geodesic_pixel_size(crs, transform, width, height, unit.unit_conversion_factor)
    # A projected CRS always counts in a length; others (engineering, local) may not.
    if not crs.is_projected and not _is_length(unit.unit_name):
        return None
    if not unit.unit_conversion_factor or unit.unit_conversion_factor <= 0:
        return None
    t = transform
    side = max(math.hypot(t.a, t.d), math.hypot(t.b, t.e))
    x, y = t @ (width / 2, height / 2)
    scale = float(map_scale(crs, np.array([x]), np.array([y]))[0])
    return side * unit.unit_conversion_factor / scale


def map_scale(crs: Any, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Map length over ground length at points (``crs`` units), from the projection's
    areal scale: 1/cos(latitude) in Web Mercator (1.41 at 45 degrees). 1 where it is
    within :data:`NOMINAL_SCALE` of 1 (UTM, state planes and national grids keep their
    nominal metres, so one flight keeps one lattice and areas match a GIS's planar
    ones), for CRSs that are not projected, and where PROJ cannot tell (engineering
    CRSs, points off the projection's domain)."""
    ones = np.ones(len(xs))
    crs = CRS.from_user_input(crs)
    if not len(xs) or not crs.is_projected:
        return ones
    try:
        proj = Proj(crs)
        lon, lat = proj(np.asarray(xs, float), np.asarray(ys, float), inverse=True)
        scale = np.sqrt(np.asarray(proj.get_factors(lon, lat).areal_scale, dtype=float))
    except Exception:  # noqa: BLE001 - PROJ raises several kinds for odd CRSs
        return ones
    usable = np.isfinite(scale) & (scale > 0) & (np.abs(scale - 1) > NOMINAL_SCALE)
    return np.where(usable, scale, 1.0)


def _geodesic_pixel_size(
    crs: CRS, transform: Affine, width: int, height: int, radians_per_unit: float
) -> float | None:
    """Longer side, in metres on the ellipsoid, of the pixel at the raster's centre."""
    to_degrees = math.degrees(radians_per_unit)
    col, row = width // 2, height // 2
    # (lon, lat) of the pixel's top-left corner and of its neighbours across and down.
    (lon0, lat0), (lon1, lat1), (lon2, lat2) = [
        (x * to_degrees, y * to_degrees)
        for x, y in (transform @ (col + dc, row + dr) for dc, dr in ((0, 0), (1, 0), (0, 1)))
    ]
    if any(not -90 <= lat <= 90 for lat in (lat0, lat1, lat2)):
        return None
    geod = crs.get_geod() or Geod(ellps="WGS84")
    _, _, across = geod.inv(lon0, lat0, lon1, lat1)
    _, _, down = geod.inv(lon0, lat0, lon2, lat2)
    size = max(across, down)
    return float(size) if math.isfinite(size) and size > 0 else None


def _is_length(name: str) -> bool:
    # Engineering CRSs may name no unit ("unknown") and still carry a factor of 1.
    from pyproj.database import get_units_map

    return name in get_units_map(category="linear") or name.lower() in ("metre", "meter", "m")


# A geographic raster wider or taller than this (degrees) is not put into one UTM zone.
MAX_UTM_SPAN = 6.0


def local_utm(
    crs: Any, bounds: tuple[float, float, float, float], *, max_span: float | None = MAX_UTM_SPAN
) -> CRS | None:
    """The UTM zone, on ``crs``'s own datum, of the centre of ``bounds`` (``crs`` units,
    x = longitude): where a raster in degrees is read in square metre pixels, and where
    a layer is measured (:func:`layer_utm`). The zone is the standard one of the
    centre's longitude (zone 1 from 180 W; a centre on the line between two zones takes
    the eastern one; past 180 E, as an extent across the antimeridian has it, the
    longitude wraps), the hemisphere that of its latitude (the equator is north). The
    EPSG code is kept where one exists (WGS 84 -> 326xx/327xx, SIRGAS 2000 -> 319xx).

    Returns None for a CRS that is not geographic, and for extents too wide for one
    zone (more than ``max_span`` degrees either way; None: any width) or beyond UTM's
    latitudes (80 S to 84 N): those stay in degrees.
    """
    from pyproj.crs import ProjectedCRS
    from pyproj.crs.coordinate_operation import UTMConversion

    crs = CRS.from_user_input(crs)
    if not crs.is_geographic or not crs.axis_info:
        return None
    to_degrees = math.degrees(crs.axis_info[0].unit_conversion_factor)
    west, south, east, north = (v * to_degrees for v in bounds)
    if max_span is not None and (east - west > max_span or north - south > max_span):
        return None
    if south < -80 or north > 84:
        return None
    lon, lat = (west + east) / 2, (south + north) / 2
    if lon > 180:
        lon -= 360
    zone = min(60, int((lon + 180) // 6) + 1)
    hemisphere = "S" if lat < 0 else "N"
    utm = ProjectedCRS(
        UTMConversion(zone, hemisphere),
        name=f"{crs.name} / UTM zone {zone}{hemisphere}",
        geodetic_crs=crs.geodetic_crs,
    )
    code = utm.to_epsg(min_confidence=70)
    return CRS.from_epsg(code) if code else utm


def layer_utm(crs: Any, bounds: tuple[float, float, float, float]) -> CRS:
    """The CRS in which a vector layer is measured in metres (areas, overlaps, sizes,
    distances): the UTM zone of :func:`local_utm` for its extent ``bounds`` (``crs``
    units), however wide, since a layer is only measured there, never read on a
    lattice. A projected ``crs`` (a state plane in feet, say) gives the zone of its
    extent in its own geographic CRS, on the same datum.

    Raises:
        InputError: the layer lies beyond UTM's latitudes (80 S to 84 N), or ``crs``
            has no geographic CRS to place it on the globe.
    """
    crs = CRS.from_user_input(crs)
    if not crs.is_geographic:
        geographic = crs.geodetic_crs
        if geographic is None or not geographic.is_geographic:
            raise InputError(f"{crs.name}: no geographic CRS to find the layer's UTM zone in")
        to_geographic = Transformer.from_crs(crs, geographic, always_xy=True)
        west, south, east, north = to_geographic.transform_bounds(*bounds)
        if west > east:  # across the antimeridian: east of it counts on from 180 E
            east += 360
        bounds, crs = (west, south, east, north), geographic
    utm = local_utm(crs, bounds, max_span=None)
    if utm is None:
        raise InputError(
            f"the layer lies beyond UTM's latitudes (80 S to 84 N) in {crs.name}, so it "
            "cannot be measured in metres there; reproject it to a projected CRS"
        )
    return utm
