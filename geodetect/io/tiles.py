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
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from geodetect.cache import cache_folder
from geodetect.errors import InputError
from geodetect.io.remote import PROBE_TIMEOUT_S, redact

#: Web Mercator's half width in metres, and its pixel at zoom 0 for 256 px tiles.
_HALF = 20037508.342789244
_ZOOM0 = 2 * _HALF / 256
TILE = 256
#: The deepest zoom level geodetect asks of a service (about 2 cm at the equator).
MAX_ZOOM = 23
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
        if self.area is not None:
            west, south, east, north = (float(v) for v in self.area)
            if not (-180 <= west < east <= 180 and -85 < south < north < 85):
                raise InputError(
                    f"--bbox {self.area}: give west,south,east,north in degrees, within "
                    "180 W-180 E and 85 S-85 N, west < east and south < north"
                )
            object.__setattr__(self, "area", (west, south, east, north))

    def __str__(self) -> str:
        return redact(self.template)

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
        self._probe(zoom, (cols[0] + cols[1]) // 2, (rows[0] + rows[1]) // 2)
        key = hashlib.sha256(f"{self.template}|{zoom}|{cols}|{rows}".encode()).hexdigest()[:12]
        folder = cache_folder("tiles", what="tile cache")
        service = folder / f"{self.host}-z{zoom}-{key[:8]}.xml"
        _write_if_changed(service, self._wms_xml(zoom, folder / "fetched"))
        vrt = folder / f"{self.host}-z{zoom}-{key}.vrt"
        _write_if_changed(vrt, _window_vrt(service, zoom, cols, rows))
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

    def _probe(self, zoom: int, x: int, y: int) -> None:
        """Fetch the tile at the area's centre: a wrong template or a zoom level the
        service lacks is one line here, not an empty layer later."""
        url = self.tile_url(zoom, x, y)
        where = f"{self}: the tile at zoom {zoom} ({x}, {y}) over the area's centre"
        try:
            with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise InputError(
                    f"{where} is not on the server (HTTP 404): check the URL template, the "
                    f"--bbox, and whether the service serves zoom {zoom} (for a coarser one, "
                    "detect at a larger --gsd with a model trained near it)"
                ) from None
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
        if status == 204:
            raise InputError(f"{where} is empty (HTTP 204): check the --bbox")


def with_area(inputs: list, area: tuple[float, float, float, float] | None) -> list:
    """``inputs`` with ``area`` given to each tile service among them (a template as
    text becomes a :class:`TileService`).

    Raises:
        InputError: ``area`` given but no input is a tile service.
    """
    if area is None:
        return inputs
    out = [
        TileService(os.fspath(i) if not isinstance(i, TileService) else i.template, area)
        if isinstance(i, TileService) or is_tile_service(i)
        else i
        for i in inputs
    ]
    if not any(isinstance(i, TileService) for i in out):
        raise InputError(
            "--bbox is the area of a STAC search (--stac URL) or of a tile service "
            "(https://host/{z}/{x}/{y}.png); no input is either"
        )
    return out


def resolve_services(inputs: list, gsd: float | None, *, hint: str = "--gsd METRES") -> list:
    """``inputs`` with each tile service replaced by its window VRT at ``gsd`` metres
    (see :meth:`TileService.window`).

    Raises:
        InputError: a tile service but no ``gsd`` (``hint`` says how to give one).
    """
    if not any(isinstance(i, TileService) for i in inputs):
        return inputs
    if gsd is None:
        first = next(i for i in inputs if isinstance(i, TileService))
        raise InputError(f"{first}: a tile service is read at a stated pixel size; give {hint}")
    return [i.window(gsd) if isinstance(i, TileService) else i for i in inputs]


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


def _window_vrt(service: Path, zoom: int, cols: tuple[int, int], rows: tuple[int, int]) -> str:
    """A VRT of the service's tiles ``cols`` x ``rows`` at ``zoom`` (RGB and alpha)."""
    size = _ZOOM0 / 2**zoom
    x_off, y_off = cols[0] * TILE, rows[0] * TILE
    width, height = (cols[1] - cols[0] + 1) * TILE, (rows[1] - rows[0] + 1) * TILE
    origin_x, origin_y = -_HALF + x_off * size, _HALF - y_off * size
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
        "  <SRS>EPSG:3857</SRS>\n"
        f"  <GeoTransform>{origin_x!r}, {size!r}, 0, {origin_y!r}, 0, {-size!r}</GeoTransform>\n"
        f'  <Metadata><MDI key="ZOOM_LEVEL">{zoom}</MDI></Metadata>\n'
        + "".join(bands)
        + "</VRTDataset>\n"
    )


def _write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` unless it holds it already (a rerun's journal knows a
    file by its size and time), through a temporary file and a rename."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return
    except OSError:
        pass
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
