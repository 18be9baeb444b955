"""Coordinate reference systems: the one parser for what users type, and the two places a
CRS lives.

- **Grids** (:class:`~geodetect.geometry.Grid`: files, mosaics, chips, the target of a
  run) carry rasterio's ``CRS``, the one GDAL reads from the files and compares the way
  GDAL does; every raster call takes it as it is.
- **Vector layers** carry pyproj's ``CRS``, the one geopandas holds.

Anything a user gives (``--crs``, a notebook argument, a CRS to assume for a layer) goes
through :func:`parse_crs`; a grid's CRS reaches a layer through :func:`to_pyproj`, and a
user's CRS reaches a grid through :func:`raster_crs`. No other module builds a CRS from
text.
"""

from __future__ import annotations

from typing import Any

from pyproj import CRS as ProjCRS
from pyproj.exceptions import CRSError
from rasterio.crs import CRS as RasterCRS

from geodetect.errors import InputError


def parse_crs(value: Any, *, what: str | None = None) -> ProjCRS:
    """A pyproj CRS from anything pyproj accepts (``"EPSG:32633"``, WKT, PROJ text, an
    EPSG number, a rasterio or pyproj CRS); InputError naming ``what`` (e.g. ``--crs``)
    for anything else."""
    if isinstance(value, ProjCRS):
        return value
    try:
        return ProjCRS.from_user_input(value)
    except (CRSError, TypeError, ValueError):
        label = f"{what} {value}" if what else repr(value)
        raise InputError(
            f"{label}: not a CRS pyproj knows; give one like EPSG:32633 or a WKT string"
        ) from None


def raster_crs(value: Any, *, what: str | None = None) -> RasterCRS:
    """The grids' CRS type from anything :func:`parse_crs` accepts; a CRS with an exact
    EPSG code is made from the code, as rasterio makes it for a file that names one."""
    if isinstance(value, RasterCRS):
        return value
    parsed = parse_crs(value, what=what)
    code = parsed.to_epsg(min_confidence=100)
    return RasterCRS.from_epsg(code) if code else RasterCRS.from_wkt(parsed.to_wkt())


def to_pyproj(crs: RasterCRS | None) -> ProjCRS | None:
    """A grid's CRS for a vector layer, keeping the raster's authority code (EPSG or ESRI)
    when it has an exact one, so the written layer names the same CRS as its source."""
    if crs is None:
        return None
    authority = crs.to_authority(confidence_threshold=100)
    if authority:
        try:
            candidate = ProjCRS.from_authority(*authority)
            if candidate.equals(ProjCRS.from_wkt(crs.to_wkt()), ignore_axis_order=True):
                return candidate
        except Exception:  # noqa: BLE001 - fall back to the WKT itself
            pass
    return ProjCRS.from_wkt(crs.to_wkt())


def crs_label(crs: Any) -> str:
    """Short text for a CRS in messages: ``EPSG:32633`` when it has a code, else its name."""
    try:
        parsed = ProjCRS.from_user_input(crs)
    except CRSError:
        return str(crs)
    authority = parsed.to_authority()
    return ":".join(authority) if authority else parsed.name
