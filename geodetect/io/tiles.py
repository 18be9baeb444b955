"""Tile services as inputs: an XYZ or TMS URL template (``https://host/{z}/{x}/{y}.png``,
``{-y}`` for TMS rows counted from the south) read over an area at a stated pixel size.

A tile service covers the world at many zoom levels, so it is an input only with an
area (``--bbox`` in degrees) and a pixel size (the model's GSD, or ``--gsd``). The zoom
level read is the coarsest whose ground pixel at the area's latitude is at most
:data:`ZOOM_TOLERANCE` coarser than that pixel size. The service at that level, cut to
the whole tiles under the area, becomes a small VRT file in geodetect's cache over a
GDAL WMS description of the service (which keeps the tiles it fetched on disk, so a
rerun reads none twice), and the rest of the pipeline reads it as any other raster:
warped into the area's UTM zone at the pixel size, so the layer is in metres. The VRT
is written only when it changes, so a rerun's journal knows it and continues.

Tiles the service does not have (HTTP 404 or 204, as over the sea) read as no data;
one tile at the area's centre is fetched first, so a wrong template or a zoom level the
service does not serve is one line, not an empty layer.
"""

from __future__ import annotations

import hashlib
import math
import os
import urllib.error
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from geodetect.cache import cache_folder
from geodetect.errors import InputError
from geodetect.io.remote import http_get, redact

#: Web Mercator's half width in metres, and its pixel at zoom 0 for 256 px tiles.
_HALF = 20037508.342789244
_ZOOM0 = 2 * _HALF / 256
TILE = 256
#: The deepest zoom level geodetect asks of a service (about 4 cm at the equator; GDAL's
#: raster of zoom 23 would be 2^31 pixels wide, past its limit).
MAX_ZOOM = 22
#: A zoom level's ground pixel may be this much coarser than the one asked for (read
#: then at the asked size); beyond it the next level down is read.
ZOOM_TOLERANCE = 0.15
_PREFIX = "xyz:"


def is_tile_service(text: str | os.PathLike) -> bool:
    """``xyz:URL``, or a URL whose path holds ``{z}``, ``{x}`` and ``{y}`` (or
    ``{-y}``)."""
    text = os.fspath(text)
    if text.startswith(_PREFIX):
        return True
    return "{z}" in text and "{x}" in text and ("{y}" in text or "{-y}" in text)


@dataclass(frozen=True)
class TileService:
    """An XYZ/TMS tile service and the area to read from it (west, south, east, north
    in degrees, WGS 84; None until one is given)."""

    template: str
    area: tuple[float, float, float, float] | None = None

    def __post_init__(self) -> None:
        template = self.template.removeprefix(_PREFIX)
        object.__setattr__(self, "template", template)
        if not template.startswith(("http://", "https://", "file://")):
            raise InputError(f"{redact(template)}: a tile service is an http(s) URL template")
        if not is_tile_service(template):
            raise InputError(
                f"{redact(template)}: a tile URL template needs {{z}}, {{x}} and {{y}} (or "
                "{-y} for TMS), e.g. https://host/tiles/{z}/{x}/{y}.png"
            )
        object.__setattr__(self, "area", _checked_area(self.area))

    def __str__(self) -> str:
        return redact(self.template)

    def with_area(self, area) -> TileService:
        return TileService(self.template, area)

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.template).hostname or "tiles"

    def zoom_for(self, gsd: float) -> int:
        """The coarsest zoom level whose ground pixel at the area's latitude is at most
        :data:`ZOOM_TOLERANCE` coarser than ``gsd`` metres."""
        latitude = math.radians((self.area[1] + self.area[3]) / 2)
        ground0 = _ZOOM0 * math.cos(latitude)
        wanted = math.log2(ground0 / (gsd * (1 + ZOOM_TOLERANCE)))
        return max(0, min(MAX_ZOOM, math.ceil(wanted)))

    def window(self, gsd: float) -> Path:
        """The VRT of the service at :meth:`zoom_for` ``gsd``, cut to the whole tiles
        under the area, in geodetect's cache (written when it changes).

        Raises:
            InputError: no area; or the service's tile at the area's centre is missing,
                refused or unreachable.
        """
        if self.area is None:
            raise InputError(
                f"{self}: a tile service covers the world; give the area to read with "
                "--bbox WEST,SOUTH,EAST,NORTH (degrees; in Python, TileService(url, area))"
            )
        zoom = self.zoom_for(gsd)
        cols, rows = _tile_range(self.area, zoom)
        self._probe(zoom, cols, rows)
        key = hashlib.sha256(f"{self.template}|{zoom}".encode()).hexdigest()[:8]
        area_key = hashlib.sha256(f"{key}|{cols}|{rows}".encode()).hexdigest()[:8]
        folder = cache_folder("tiles", what="tile cache")
        service = folder / f"{self.host}-z{zoom}-{key}.xml"  # the service, any area
        _write_if_changed(service, self._wms_xml(zoom, folder / "fetched"))
        vrt = folder / f"{self.host}-z{zoom}-{key}-{area_key}.vrt"
        window = (
            cols[0] * TILE,
            rows[0] * TILE,
            (cols[1] - cols[0] + 1) * TILE,
            (rows[1] - rows[0] + 1) * TILE,
        )
        pixel = _ZOOM0 / 2**zoom
        _write_if_changed(vrt, _window_vrt(service, "EPSG:3857", pixel, (-_HALF, _HALF), window))
        return vrt

    def tile_url(self, zoom: int, x: int, y: int) -> str:
        return (
            self.template.replace("{z}", str(zoom))
            .replace("{x}", str(x))
            .replace("{-y}", str(2**zoom - 1 - y))
            .replace("{y}", str(y))
        )

    def _wms_xml(self, zoom: int, fetched: Path) -> str:
        bottom = "{-y}" in self.template
        url = self.template.replace("{-y}", "{y}")
        for name in "zxy":
            url = url.replace("{" + name + "}", "${" + name + "}")
        return (
            "<GDAL_WMS>\n"
            f'  <Service name="TMS"><ServerUrl>{escape(url)}</ServerUrl></Service>\n'
            "  <DataWindow>\n"
            f"    <UpperLeftX>{-_HALF!r}</UpperLeftX><UpperLeftY>{_HALF!r}</UpperLeftY>\n"
            f"    <LowerRightX>{_HALF!r}</LowerRightX><LowerRightY>{-_HALF!r}</LowerRightY>\n"
            f"    <TileLevel>{zoom}</TileLevel><TileCountX>1</TileCountX>"
            "<TileCountY>1</TileCountY>\n"
            f"    <YOrigin>{'bottom' if bottom else 'top'}</YOrigin>\n"
            "  </DataWindow>\n"
            "  <Projection>EPSG:3857</Projection>\n"
            f"  <BlockSizeX>{TILE}</BlockSizeX><BlockSizeY>{TILE}</BlockSizeY>\n"
            "  <BandsCount>4</BandsCount>\n"
            "  <MaxConnections>8</MaxConnections>\n"
            "  <ZeroBlockHttpCodes>204,404</ZeroBlockHttpCodes>\n"
            f"  <Cache><Path>{escape(str(fetched))}</Path></Cache>\n"
            "</GDAL_WMS>\n"
        )

    def _probe(self, zoom: int, cols: tuple[int, int], rows: tuple[int, int]) -> None:
        """Fetch the tile at the area's centre, else those at its corners (the centre
        may lie over the sea, where services have none): a wrong template or a zoom
        level the service lacks is one line here, not an empty layer later."""
        centre = ((cols[0] + cols[1]) // 2, (rows[0] + rows[1]) // 2)
        corners = [(x, y) for x in dict.fromkeys(cols) for y in dict.fromkeys(rows)]
        for x, y in dict.fromkeys([centre, *corners]):
            url = self.tile_url(zoom, x, y)
            where = f"{self}: the tile at zoom {zoom} ({x}, {y}) over the area"
            try:
                with http_get(url) as response:
                    if response.status != 204:
                        return
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    continue
                if exc.code in (401, 403):
                    raise InputError(
                        f"{where} is refused (HTTP {exc.code}); check the service's key or "
                        "token in the URL"
                    ) from None
                raise InputError(f"{where}: the server answered HTTP {exc.code}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                reason = getattr(exc, "reason", exc)
                raise InputError(
                    f"{self}: cannot reach the tile server ({reason}); check the URL and the "
                    "network, and rerun"
                ) from None
        raise InputError(
            f"{self}: no tile at zoom {zoom} over the area's centre or corners (HTTP 404 or "
            f"204): check the URL template, the --bbox, and whether the service serves zoom "
            f"{zoom} (for a coarser one, detect at a larger --gsd with a model trained near "
            "it)"
        )


_WMTS_PREFIX = "WMTS:"
_OWS = "{http://www.opengis.net/ows/1.1}"
_WMTS = "{http://www.opengis.net/wmts/1.0}"
# WMTS's standardised rendering pixel, 0.28 mm: a matrix's pixel in metres is its scale
# denominator times this.
_RENDERING_PIXEL_M = 0.28e-3


def is_wmts(text: str | os.PathLike) -> bool:
    """``WMTS:URL[,layer=...][,tilematrixset=...]`` (GDAL's syntax), or a capabilities
    URL (``.../WMTSCapabilities.xml``, ``...?SERVICE=WMTS&REQUEST=GetCapabilities``)."""
    text = os.fspath(text)
    lowered = text.lower()
    return text.upper().startswith(_WMTS_PREFIX) or (
        lowered.startswith(("http://", "https://"))
        and ("wmtscapabilities" in lowered or "service=wmts" in lowered)
    )


@dataclass(frozen=True)
class TileMatrix:
    """One zoom level of a WMTS tile matrix set."""

    identifier: str
    pixel: float  # CRS units
    origin: tuple[float, float]  # upper left corner
    tile: tuple[int, int]  # width, height in pixels
    size: tuple[int, int]  # matrix width, height in tiles


@dataclass(frozen=True)
class WmtsService:
    """A WMTS layer (its capabilities URL, the layer and tile matrix set, None where
    the capabilities offer one) and the area to read (as :class:`TileService`)."""

    url: str
    layer: str | None = None
    matrix_set: str | None = None
    area: tuple[float, float, float, float] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "area", _checked_area(self.area))

    @classmethod
    def parse(cls, text: str, area=None) -> WmtsService:
        """``WMTS:URL,layer=L,tilematrixset=S`` (options in any order) or a URL."""
        body = text[len(_WMTS_PREFIX) :] if text.upper().startswith(_WMTS_PREFIX) else text
        url, *options = body.split(",")
        named = {}
        for option in options:
            key, _, value = option.partition("=")
            named[key.strip().lower()] = value.strip()
        unknown = set(named) - {"layer", "tilematrixset"}
        if unknown:
            raise InputError(
                f"{redact(url)}: unknown WMTS option(s) {', '.join(sorted(unknown))}; give "
                "WMTS:URL,layer=NAME,tilematrixset=NAME"
            )
        return cls(url, named.get("layer"), named.get("tilematrixset"), area)

    def __str__(self) -> str:
        return f"WMTS {redact(self.url)}" + (f" layer {self.layer}" if self.layer else "")

    def with_area(self, area) -> WmtsService:
        return WmtsService(self.url, self.layer, self.matrix_set, area)

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.url).hostname or "wmts"

    def window(self, gsd: float) -> Path:
        """The VRT of the layer at the coarsest tile matrix whose ground pixel at the
        area is at most :data:`ZOOM_TOLERANCE` coarser than ``gsd``, cut to the whole
        tiles under the area (see :meth:`TileService.window`).

        Raises:
            InputError: no area; capabilities that cannot be read or lack the layer or
                matrix set; a tile matrix set in a CRS without metres or degrees.
        """
        from pyproj import Transformer

        from geodetect.io.units import gsd_metres

        if self.area is None:
            raise InputError(
                f"{self}: a WMTS layer covers a whole country or more; give the area to "
                "read with --bbox WEST,SOUTH,EAST,NORTH (degrees)"
            )
        layer, matrix_set, crs, matrices, document = self._capabilities()
        centre = ((self.area[0] + self.area[2]) / 2, (self.area[1] + self.area[3]) / 2)
        to_crs = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
        x, y = to_crs.transform(*centre)

        def ground(m: TileMatrix) -> float:
            from affine import Affine

            at = Affine(m.pixel, 0.0, x - m.pixel / 2, 0.0, -m.pixel, y + m.pixel / 2)
            return gsd_metres(crs, at, 1, 1) or m.pixel

        fine_enough = [m for m in matrices if ground(m) <= gsd * (1 + ZOOM_TOLERANCE)]
        matrix = (
            max(fine_enough, key=lambda m: m.pixel)
            if fine_enough
            else min(matrices, key=lambda m: m.pixel)
        )
        # the area's outline, not its corners: in other projections its edges bulge
        left, bottom, right, top = to_crs.transform_bounds(*self.area, densify_pts=21)
        span_x, span_y = matrix.tile[0] * matrix.pixel, matrix.tile[1] * matrix.pixel
        col0 = max(0, math.floor((left - matrix.origin[0]) / span_x))
        col1 = min(matrix.size[0] - 1, math.floor((right - matrix.origin[0]) / span_x))
        row0 = max(0, math.floor((matrix.origin[1] - top) / span_y))
        row1 = min(matrix.size[1] - 1, math.floor((matrix.origin[1] - bottom) / span_y))
        if col1 < col0 or row1 < row0:
            raise InputError(f"{self}: the --bbox lies outside the layer's tile matrix set")
        ident = f"{self.url}|{layer}|{matrix_set}|{matrix.identifier}"
        key = hashlib.sha256(ident.encode()).hexdigest()[:8]  # the service, any area
        folder = cache_folder("tiles", what="tile cache")
        name = f"{self.host}-{_safe(layer)}-{_safe(matrix.identifier)}"
        service = folder / f"{name}-{key}.xml"
        # The capabilities as fetched now, beside it: GDAL reads them from there in every
        # reader process, not from the server each time (tiles still come from it).
        capabilities = folder / f"{name}-{key}-capabilities.xml"
        _write_if_changed(capabilities, document)
        _write_if_changed(
            service,
            "<GDAL_WMTS>\n"
            f"  <GetCapabilitiesUrl>{escape(str(capabilities))}</GetCapabilitiesUrl>\n"
            f"  <Layer>{escape(layer)}</Layer>\n"
            f"  <TileMatrixSet>{escape(matrix_set)}</TileMatrixSet>\n"
            f"  <TileMatrix>{escape(matrix.identifier)}</TileMatrix>\n"
            "  <BandsCount>4</BandsCount>\n"
            "  <ZeroBlockHttpCodes>204,404</ZeroBlockHttpCodes>\n"
            f"  <Cache><Path>{escape(str(folder / 'fetched'))}</Path></Cache>\n"
            "</GDAL_WMTS>\n",
        )
        # GDAL's raster of the layer starts where the layer's bounding box (or the
        # matrix limits) put it, not at the matrix's corner: offsets from its origin.
        origin = _dataset_origin(service, self)
        x_off = round((matrix.origin[0] + col0 * span_x - origin[0]) / matrix.pixel)
        y_off = round((origin[1] - (matrix.origin[1] - row0 * span_y)) / matrix.pixel)
        width = (col1 - col0 + 1) * matrix.tile[0]
        height = (row1 - row0 + 1) * matrix.tile[1]
        if x_off < 0:
            x_off, width = 0, width + x_off
        if y_off < 0:
            y_off, height = 0, height + y_off
        area_key = hashlib.sha256(f"{ident}|{x_off, y_off, width, height}".encode()).hexdigest()
        vrt = folder / f"{name}-{key}-{area_key[:8]}.vrt"
        window = (x_off, y_off, width, height)
        _write_if_changed(vrt, _window_vrt(service, crs.to_wkt(), matrix.pixel, origin, window))
        return vrt

    def _capabilities(self):
        """(layer, tile matrix set, its CRS, its matrices, the document as fetched) from
        the capabilities."""
        import xml.etree.ElementTree as ET

        from pyproj import CRS

        try:
            with http_get(self.url) as response:
                document = response.read()
            root = ET.fromstring(document)
        except urllib.error.HTTPError as exc:
            raise InputError(
                f"{self}: the capabilities could not be read (HTTP {exc.code}); check the URL"
            ) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            raise InputError(f"{self}: cannot reach the server ({reason}); check the URL") from None
        except ET.ParseError as exc:
            raise InputError(f"{self}: not a WMTS capabilities document ({exc})") from None
        contents = root.find(f"{_WMTS}Contents")
        layers = [] if contents is None else contents.findall(f"{_WMTS}Layer")
        names = [ly.findtext(f"{_OWS}Identifier") for ly in layers]
        if not layers:
            raise InputError(f"{self}: the capabilities list no layer; check the URL")
        if self.layer is None and len(layers) > 1:
            raise InputError(
                f"{self}: the service has {len(layers)} layers; choose one with "
                f"WMTS:URL,layer=NAME ({', '.join(names[:8])}{'...' if len(names) > 8 else ''})"
            )
        chosen = layers[0] if self.layer is None else None
        for ly, nm in zip(layers, names, strict=True):
            if nm == self.layer:
                chosen = ly
        if chosen is None:
            raise InputError(
                f"{self}: no layer {self.layer!r} in the capabilities ({', '.join(names[:8])})"
            )
        layer = chosen.findtext(f"{_OWS}Identifier")
        links = [
            ln.findtext(f"{_WMTS}TileMatrixSet")
            for ln in chosen.findall(f"{_WMTS}TileMatrixSetLink")
        ]
        if self.matrix_set is not None and self.matrix_set not in links:
            raise InputError(
                f"{self}: the layer has no tile matrix set {self.matrix_set!r} ({', '.join(links)})"
            )
        matrix_set = self.matrix_set or links[0]
        for candidate in contents.findall(f"{_WMTS}TileMatrixSet"):
            if candidate.findtext(f"{_OWS}Identifier") == matrix_set:
                break
        else:
            raise InputError(f"{self}: the capabilities define no tile matrix set {matrix_set!r}")
        named_crs = (candidate.findtext(f"{_OWS}SupportedCRS") or "").strip()
        if named_crs.endswith((":102100", ":900913")):  # ESRI's and an old name for 3857
            named_crs = "EPSG:3857"
        try:
            crs = CRS.from_user_input(named_crs)
        except Exception:  # pyproj's CRSError, or nothing given
            raise InputError(
                f"{self}: the tile matrix set {matrix_set!r} has no CRS geodetect knows "
                f"({named_crs or 'none given'})"
            ) from None
        unit = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
        if crs.is_geographic:  # degrees: the 0.28 mm pixel is measured on WMTS's sphere
            unit = 2 * math.pi * 6378137.0 / 360.0
        swap = crs.axis_info and crs.axis_info[0].direction.lower() in ("north", "south")
        matrices = []
        for m in candidate.findall(f"{_WMTS}TileMatrix"):
            corner = [float(v) for v in m.findtext(f"{_WMTS}TopLeftCorner").split()]
            if swap:  # northing (or latitude) first, as the CRS orders its axes
                corner.reverse()

            def whole(name: str, m=m) -> int:
                return int(m.findtext(f"{_WMTS}{name}"))

            matrices.append(
                TileMatrix(
                    m.findtext(f"{_OWS}Identifier"),
                    float(m.findtext(f"{_WMTS}ScaleDenominator")) * _RENDERING_PIXEL_M / unit,
                    (corner[0], corner[1]),
                    (whole("TileWidth"), whole("TileHeight")),
                    (whole("MatrixWidth"), whole("MatrixHeight")),
                )
            )
        if not matrices:
            raise InputError(f"{self}: the tile matrix set {matrix_set!r} has no matrices")
        return layer, matrix_set, crs, matrices, document


def _dataset_origin(service: Path, named) -> tuple[float, float]:
    """The upper left corner of the raster GDAL makes of a service description."""
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        with rasterio.open(service) as ds:
            return ds.transform.c, ds.transform.f
    except RasterioIOError as exc:
        raise InputError(f"{named}: GDAL cannot open the service ({exc})") from None


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:40]


def _checked_area(area) -> tuple[float, float, float, float] | None:
    if area is None:
        return None
    west, south, east, north = (float(v) for v in area)
    if not (-180 <= west < east <= 180 and -85 < south < north < 85):
        raise InputError(
            f"--bbox {tuple(area)}: give west,south,east,north in degrees, within "
            "180 W-180 E and 85 S-85 N, west < east and south < north"
        )
    return (west, south, east, north)


#: The input values that are services, read by :func:`resolve_services`.
SERVICES = (TileService, WmtsService)


def service_of(text: str | os.PathLike, area=None):
    """The service ``text`` names (a WMTS or an XYZ/TMS template), with ``area``."""
    text = os.fspath(text)
    if is_tile_service(text):  # a template, even a WMTS GetTile one
        return TileService(text, area)
    return WmtsService.parse(text, area)


def with_area(inputs: list, area: tuple[float, float, float, float] | None) -> list:
    """``inputs`` with ``area`` given to each service among them (a service named as
    text becomes a :class:`TileService` or :class:`WmtsService`).

    Raises:
        InputError: ``area`` given but no input is a service.
    """
    if area is None:
        return inputs
    out = [
        i.with_area(area)
        if isinstance(i, SERVICES)
        else service_of(i, area)
        if is_service(i)
        else i
        for i in inputs
    ]
    if not any(isinstance(i, SERVICES) for i in out):
        raise InputError(
            "--bbox is the area of a STAC search (--stac URL) or of a tile service "
            "(https://host/{z}/{x}/{y}.png, WMTS:URL); no input is either"
        )
    return out


def is_service(text) -> bool:
    """Whether ``text`` names a tile service: XYZ/TMS or WMTS."""
    return not isinstance(text, SERVICES) and (is_wmts(text) or is_tile_service(text))


def resolve_services(inputs: list, gsd: float | None, *, hint: str = "--gsd METRES") -> list:
    """``inputs`` with each service replaced by its window VRT at ``gsd`` metres (see
    :meth:`TileService.window`).

    Raises:
        InputError: a service but no ``gsd`` (``hint`` says how to give one).
    """
    if not any(isinstance(i, SERVICES) for i in inputs):
        return inputs
    if gsd is None:
        first = next(i for i in inputs if isinstance(i, SERVICES))
        raise InputError(f"{first}: a tile service is read at a stated pixel size; give {hint}")
    return [i.window(gsd) if isinstance(i, SERVICES) else i for i in inputs]


def _tile_range(
    area: tuple[float, float, float, float], zoom: int
) -> tuple[tuple[int, int], tuple[int, int]]:
    """The first and last tile columns and rows under ``area`` at ``zoom``."""
    west, south, east, north = area
    n = 2**zoom

    def col(lon: float) -> int:
        return min(n - 1, max(0, math.floor((lon + 180.0) / 360.0 * n)))

    def row(lat: float) -> int:
        y = math.log(math.tan(math.pi / 4 + math.radians(lat) / 2))
        return min(n - 1, max(0, math.floor((1 - y / math.pi) / 2 * n)))

    return (col(west), col(east)), (row(north), row(south))


def _window_vrt(
    service: Path,
    srs: str,
    pixel: float,
    origin: tuple[float, float],
    window: tuple[int, int, int, int],
) -> str:
    """A VRT of ``window`` (column and row offset, width, height, in pixels of
    ``pixel`` CRS units from the service's ``origin``, its upper left corner) of the
    service description file ``service``: RGB and alpha."""
    x_off, y_off, width, height = window
    origin_x, origin_y = origin[0] + x_off * pixel, origin[1] - y_off * pixel
    bands = []
    for band, colour in enumerate(("Red", "Green", "Blue", "Alpha"), start=1):
        bands.append(
            f'  <VRTRasterBand dataType="Byte" band="{band}">\n'
            f"    <ColorInterp>{colour}</ColorInterp>\n"
            "    <SimpleSource>\n"
            f'      <SourceFilename relativeToVRT="1">{escape(service.name)}</SourceFilename>\n'
            f"      <SourceBand>{band}</SourceBand>\n"
            f'      <SrcRect xOff="{x_off}" yOff="{y_off}" xSize="{width}" ySize="{height}"/>\n'
            f'      <DstRect xOff="0" yOff="0" xSize="{width}" ySize="{height}"/>\n'
            "    </SimpleSource>\n"
            "  </VRTRasterBand>\n"
        )
    return (
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">\n'
        f"  <SRS>{escape(srs)}</SRS>\n"
        f"  <GeoTransform>{origin_x!r}, {pixel!r}, 0, {origin_y!r}, 0, {-pixel!r}</GeoTransform>\n"
        + "".join(bands)
        + "</VRTDataset>\n"
    )


def _write_if_changed(path: Path, content: str | bytes) -> None:
    """Write ``content`` (text as UTF-8) to ``path`` unless it holds it already (a
    rerun's journal knows a file by its size and time), through a temporary file and a
    rename."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    try:
        if path.read_bytes() == data:
            return
    except OSError:
        pass
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_bytes(data)
    os.replace(partial, path)
