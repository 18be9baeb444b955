"""A local HTTP file server for the remote-imagery tests: range requests (one range per
request, as GDAL asks), ETag and Last-Modified, and switches that make it behave as the
servers users meet do (no range support, refusals, a file gone missing, a server that
fails for a while)."""

from __future__ import annotations

import base64
import email.utils
import http.server
import json
import threading
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

# GDAL's first read of a remote file (its header, and more): 16 KiB.
HEADER = 16384
GEOJSON = "application/geo+json"


@dataclass
class Behaviour:
    """What the server does; tests change it while it runs."""

    ranges: bool = True  # answer Range with 206, or ignore it and send the whole file
    forbidden: set = field(default_factory=set)  # file names answered with 403
    # file names whose pixel reads (ranges past the first HEADER bytes, which hold a
    # GeoTIFF's header) are answered with 503: the file opens, its chips fail
    failing: set = field(default_factory=set)
    requests: list = field(default_factory=list)  # (method, path, Range header) seen
    # "user:password" that basic authentication must give (None: anyone may read)
    userpwd: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root: Path
    behaviour: Behaviour

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, *, body: bool) -> None:
        b = self.behaviour
        name = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
        with b.lock:
            b.requests.append((self.command, name, self.headers.get("Range")))
        path = self.root / name
        if b.userpwd is not None:
            given = self.headers.get("Authorization", "")
            if given != "Basic " + base64.b64encode(b.userpwd.encode()).decode():
                return self._status(401)
        if Path(name).name in b.forbidden:
            return self._status(403)
        wanted = self.headers.get("Range", "")
        start = wanted[len("bytes=") :].partition("-")[0]
        if Path(name).name in b.failing and start.isdigit() and int(start) >= HEADER:
            return self._status(503)
        if not path.is_file():
            return self._status(404)
        st = path.stat()
        size = st.st_size
        headers = {
            "ETag": f'"{st.st_size:x}-{st.st_mtime_ns:x}"',
            "Last-Modified": email.utils.formatdate(st.st_mtime, usegmt=True),
            "Content-Type": "image/tiff",
        }
        status, start, end = 200, 0, size - 1
        if b.ranges:
            headers["Accept-Ranges"] = "bytes"
        if b.ranges and wanted.startswith("bytes=") and "," not in wanted:
            first, _, last = wanted[len("bytes=") :].partition("-")
            if first:
                start, end = int(first), min(int(last) if last else size - 1, size - 1)
            else:  # the last N bytes
                start = max(0, size - int(last))
            if start >= size:
                return self._status(416)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        with path.open("rb") as f:
            f.seek(start)
            chunk = f.read(end + 1 - start)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        if body:
            self.wfile.write(chunk)

    def _status(self, code: int) -> None:
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()


@contextmanager
def file_server(root: Path):
    """Serve ``root`` on 127.0.0.1; yields (base URL, :class:`Behaviour`)."""
    behaviour = Behaviour()
    handler = type("Handler", (_Handler,), {"root": Path(root), "behaviour": behaviour})
    with _serving(handler) as url:
        yield url, behaviour


@contextmanager
def _serving(handler):
    """``handler`` serving on a free port of 127.0.0.1 in a thread; yields its URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _StacHandler(http.server.BaseHTTPRequestHandler):
    """A STAC API's landing page and item search (POST or GET /search, pages of
    ``limit`` items linked by ``next``), over a fixed list of items."""

    protocol_version = "HTTP/1.1"
    items: list
    searches: list

    def log_message(self, *args) -> None:
        pass

    def _json(self, body: dict, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/geo+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _base(self) -> str:
        return f"http://{self.headers['Host']}"

    def do_GET(self) -> None:
        parts = urllib.parse.urlsplit(self.path)
        if parts.path in ("", "/"):
            return self._json(
                {
                    "type": "Catalog",
                    "stac_version": "1.0.0",
                    "id": "test-api",
                    "description": "a STAC API for the tests",
                    "conformsTo": [
                        "https://api.stacspec.org/v1.0.0/core",
                        "https://api.stacspec.org/v1.0.0/item-search",
                    ],
                    "links": [
                        {"rel": "self", "href": self._base() + "/"},
                        {"rel": "root", "href": self._base() + "/"},
                        {
                            "rel": "search",
                            "href": self._base() + "/search",
                            "method": "POST",
                            "type": GEOJSON,
                        },
                        {
                            "rel": "search",
                            "href": self._base() + "/search",
                            "method": "GET",
                            "type": GEOJSON,
                        },
                    ],
                }
            )
        if parts.path == "/search":
            query = dict(urllib.parse.parse_qsl(parts.query))
            if "bbox" in query:
                query["bbox"] = [float(v) for v in query["bbox"].split(",")]
            if "collections" in query:
                query["collections"] = query["collections"].split(",")
            return self._search(query)
        self._json({"code": "NotFound"}, 404)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        if urllib.parse.urlsplit(self.path).path != "/search":
            return self._json({"code": "NotFound"}, 404)
        self._search(body)

    def _search(self, terms: dict) -> None:
        self.searches.append(terms)
        found = [i for i in self.items if _matches(i, terms)]
        start, limit = int(terms.get("token", 0)), int(terms.get("limit", 2))
        page = found[start : start + limit]
        links = []
        if start + limit < len(found):
            body = {**terms, "token": start + limit}
            links.append(
                {"rel": "next", "href": self._base() + "/search", "method": "POST", "body": body}
            )
        self._json({"type": "FeatureCollection", "features": page, "links": links})


def _matches(item: dict, terms: dict) -> bool:
    if terms.get("collections") and item.get("collection") not in terms["collections"]:
        return False
    if terms.get("bbox"):
        w, s, e, n = terms["bbox"]
        iw, is_, ie, in_ = item["bbox"]
        if iw > e or ie < w or is_ > n or in_ < s:
            return False
    when = terms.get("datetime")
    if when:
        date = item["properties"]["datetime"][:10]
        first, _, last = when.partition("/") if "/" in when else (when, "", when)
        if first not in ("", "..") and date < first[:10]:
            return False
        if last not in ("", "..") and date > last[:10]:
            return False
    return True


@contextmanager
def stac_api(items: list):
    """A STAC API searching ``items`` on 127.0.0.1; yields (URL, the searches seen)."""
    searches: list = []
    handler = type("Handler", (_StacHandler,), {"items": items, "searches": searches})
    with _serving(handler) as url:
        yield url + "/", searches


def xyz_tiles(scene: Path, root: Path, zoom: int, *, tms: bool = False) -> tuple:
    """Cut ``scene`` into the 256 px PNG tiles (RGB and alpha) of a Web Mercator tile
    service at ``zoom``, as ``root/z/x/y.png`` (``y`` counted from the south with
    ``tms``), so that :func:`file_server` serves them as an XYZ service; returns the
    scene's area (west, south, east, north in degrees)."""
    import rasterio
    from rasterio.warp import transform_bounds

    half = 20037508.342789244
    last = 2**zoom - 1
    matrix_tiles(
        scene,
        root / str(zoom),
        "EPSG:3857",
        (-half, half),
        2 * half / 256 / 2**zoom,
        name=lambda col, row: f"{col}/{last - row if tms else row}.png",
    )
    with rasterio.open(scene) as ds:
        return transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)


def matrix_tiles(
    scene: Path,
    root: Path,
    crs: str,
    origin: tuple,
    pixel: float,
    *,
    name=lambda col, row: f"{col}/{row}.png",
) -> tuple:
    """Cut ``scene`` into the 256 px PNG tiles (RGB and alpha) of a tile matrix in
    ``crs`` with its upper left corner at ``origin`` and ``pixel`` CRS units a pixel, as
    ``root/name(col, row)`` (``COL/ROW.png``); returns the (first, last) columns and
    rows written."""
    import math
    import warnings

    import numpy as np
    import rasterio
    from affine import Affine
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.warp import Resampling, reproject, transform_bounds

    with rasterio.open(scene) as ds:
        west, south, east, north = transform_bounds(ds.crs, crs, *ds.bounds)
        data = ds.read()
        valid = np.full((1, *data.shape[1:]), 255, np.uint8)
        where = dict(src_transform=ds.transform, src_crs=ds.crs, dst_crs=crs)
    span = 256 * pixel
    cols = (math.floor((west - origin[0]) / span), math.floor((east - origin[0]) / span))
    rows = (math.floor((origin[1] - north) / span), math.floor((origin[1] - south) / span))
    for col in range(cols[0], cols[1] + 1):
        for row in range(rows[0], rows[1] + 1):
            at = Affine(pixel, 0, origin[0] + col * span, 0, -pixel, origin[1] - row * span)
            tile = np.zeros((4, 256, 256), np.uint8)
            reproject(data, tile[:3], dst_transform=at, resampling=Resampling.bilinear, **where)
            reproject(valid, tile[3:], dst_transform=at, resampling=Resampling.nearest, **where)
            path = root / name(col, row)
            path.parent.mkdir(parents=True, exist_ok=True)
            with warnings.catch_warnings():  # a tile has no georeferencing of its own
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(
                    path, "w", driver="PNG", width=256, height=256, count=4, dtype="uint8"
                ) as out:
                    out.write(tile)
    return cols, rows


def wmts_capabilities(url: str, template: str, sets: dict, *, bbox: tuple | None = None) -> str:
    """A WMTS 1.0.0 capabilities document of one layer, ``ortho``, in the tile matrix
    sets ``sets`` ({name: (CRS URN, origin, [(matrix id, pixel in CRS units, matrix
    width and height in tiles)...])}), its tiles at ``url``/``template`` (with
    {TileMatrixSet}, {TileMatrix}, {TileCol}, {TileRow}), plus a second layer,
    ``other``, in the first set only, so that a layer must be named. ``bbox`` (west,
    south, east, north in degrees): the layers' WGS84BoundingBox, which moves the
    origin of GDAL's raster of a layer off its matrix's corner, as real services do."""
    matrix_sets, links = [], []
    for name, (crs, origin, matrices) in sets.items():
        rows = "".join(
            f"<TileMatrix><ows:Identifier>{ident}</ows:Identifier>"
            f"<ScaleDenominator>{pixel / 0.28e-3!r}</ScaleDenominator>"
            f"<TopLeftCorner>{origin[0]!r} {origin[1]!r}</TopLeftCorner>"
            "<TileWidth>256</TileWidth><TileHeight>256</TileHeight>"
            f"<MatrixWidth>{size}</MatrixWidth><MatrixHeight>{size}</MatrixHeight></TileMatrix>"
            for ident, pixel, size in matrices
        )
        matrix_sets.append(
            f"<TileMatrixSet><ows:Identifier>{name}</ows:Identifier>"
            f"<ows:SupportedCRS>{crs}</ows:SupportedCRS>{rows}</TileMatrixSet>"
        )
        links.append(
            f"<TileMatrixSetLink><TileMatrixSet>{name}</TileMatrixSet></TileMatrixSetLink>"
        )
    extent = (
        ""
        if bbox is None
        else f"<ows:WGS84BoundingBox><ows:LowerCorner>{bbox[0]!r} {bbox[1]!r}</ows:LowerCorner>"
        f"<ows:UpperCorner>{bbox[2]!r} {bbox[3]!r}</ows:UpperCorner></ows:WGS84BoundingBox>"
    )
    resource = f'<ResourceURL format="image/png" resourceType="tile" template="{url}/{template}"/>'
    layer = (
        "<Layer><ows:Title>{0}</ows:Title><ows:Identifier>{0}</ows:Identifier>"
        '<Style isDefault="true"><ows:Identifier>default</ows:Identifier></Style>'
        "<Format>image/png</Format>" + extent + "{1}{2}</Layer>"
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<Capabilities xmlns="http://www.opengis.net/wmts/1.0" '
        'xmlns:ows="http://www.opengis.net/ows/1.1" '
        'xmlns:xlink="http://www.w3.org/1999/xlink" version="1.0.0">'
        "<ows:ServiceIdentification><ows:ServiceType>OGC WMTS</ows:ServiceType>"
        "<ows:ServiceTypeVersion>1.0.0</ows:ServiceTypeVersion></ows:ServiceIdentification>"
        "<Contents>"
        + layer.format("ortho", "".join(links), resource)
        + layer.format("other", links[0], resource)
        + "".join(matrix_sets)
        + "</Contents></Capabilities>"
    )
