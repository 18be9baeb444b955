"""Imagery that is not a local file: a URL (``https://``, ``s3://``, ``gs://``, ``az://``)
or a GDAL virtual path (``/vsicurl/``, ``/vsis3/``...), read by range requests.

A :class:`Remote` stands where a :class:`~pathlib.Path` stands in a scene's description:
it has a ``name`` (the last part of the URL's path) for the layer's provenance and the
log, it prints without credentials or a signed URL's query, and GDAL opens it through
``os.fspath``. What the server says about it (size, ETag, Last-Modified) is its identity
in a run's journal (:func:`stamp`).
"""

from __future__ import annotations

import base64
import os
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import PurePosixPath

from geodetect.errors import InputError

# Schemes rasterio hands to GDAL's network file systems, and GDAL's own prefixes.
URL_SCHEMES = ("http://", "https://", "s3://", "gs://", "az://")
VSI_PREFIX = "/vsi"
# GDAL settings for reading over a network (as cloud-native tile servers set them),
# unless the user's environment sets them: consecutive tile reads in one request, HTTP/2
# multiplexing, a few retries on a busy server. They concern network reads only.
NETWORK_DEFAULTS = {
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_HTTP_TIMEOUT": "60",
}
# Set only while a remote file is opened: GDAL would otherwise list the remote folder
# (or probe a dozen sidecar names) for each file. Local files keep their sidecars.
OPEN_OPTIONS = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}
# Where credentials come from, as the error lines name them.
CREDENTIALS = (
    "the credentials (AWS_*, GS_*, AZURE_*, GDAL_HTTP_USERPWD; --no-sign-request for a "
    "public bucket)"
)
# How long the probe of one URL waits for the server.
PROBE_TIMEOUT_S = 30
# Query keys of signed URLs (S3 and Google presigned, Azure SAS): their values are
# credentials or change with each signing, so they are printed and stored as "…".
_SIGNING_KEYS = {
    "sig", "se", "st", "sp", "sv", "sr", "spr", "srt", "ss", "skoid", "sktid", "skt",
    "ske", "sks", "skv", "expires", "policy", "key-pair-id", "signature",
}  # fmt: skip
_SECRET_HINTS = ("token", "signature", "credential", "secret", "password", "apikey", "api_key")
_SIGNING_PREFIXES = ("x-amz-", "x-goog-")


def is_remote(text: str | os.PathLike) -> bool:
    """Whether an input names a URL or a GDAL virtual file rather than a local path."""
    if isinstance(text, Remote):
        return True
    if not isinstance(text, str):
        return False
    return text.lower().startswith(URL_SCHEMES) or text.startswith(VSI_PREFIX)


@dataclass(frozen=True)
class Remote(os.PathLike):
    """An input read over the network (or through another GDAL virtual file system).
    ``identity``: what the journal knows it by when not its URL (a STAC item's id,
    asset and update time: a URL signed again is the same input)."""

    uri: str
    identity: str | None = None

    def __fspath__(self) -> str:
        return self.uri

    def __str__(self) -> str:
        return redact(self.uri)

    def __repr__(self) -> str:
        return f"Remote({redact(self.uri)!r}, identity={self.identity!r})"

    @property
    def url(self) -> str | None:
        """The http(s) URL behind it, when there is one (``/vsicurl/`` unwrapped)."""
        text = self.uri
        if text.startswith("/vsicurl/"):
            text = text[len("/vsicurl/") :]
            # /vsicurl?url=...&other options: the URL is a parameter.
        elif text.startswith("/vsicurl?"):
            query = urllib.parse.parse_qs(text[len("/vsicurl?") :])
            text = query.get("url", [""])[0]
        return text if text.lower().startswith(("http://", "https://")) else None

    @property
    def name(self) -> str:
        """The file's name: the last part of the URL's path, without its query."""
        path = self.uri.split("?", 1)[0].rstrip("/")
        return PurePosixPath(urllib.parse.unquote(path)).name or path

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix


def redact(uri: str) -> str:
    """``uri`` as it may be printed, logged or stored: no user or password, and the
    values of query parameters that look like credentials (a signed URL's signature,
    a SAS token) replaced by ``…``."""
    prefix = ""
    text = uri
    if text.startswith(VSI_PREFIX) and "/" in text[1:]:
        head, _, rest = text[1:].partition("/")
        prefix, text = f"/{head}/", rest
    parts = urllib.parse.urlsplit(text)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    query = "&".join(f"{k}=…" if _is_secret(k) else f"{k}={v}" for k, v in pairs)
    return prefix + urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _is_secret(key: str) -> bool:
    key = key.lower()
    return (
        key in _SIGNING_KEYS
        or key.startswith(_SIGNING_PREFIXES)
        or any(hint in key for hint in _SECRET_HINTS)
    )


def set_aws(*, no_sign_request: bool = False, requester_pays: bool = False) -> None:
    """Anonymous reads of public buckets, or requests paid by the reader, for ``s3://``
    and ``/vsis3/`` inputs (GDAL's own settings, so reader processes inherit them)."""
    if no_sign_request:
        os.environ["AWS_NO_SIGN_REQUEST"] = "YES"
    if requester_pays:
        os.environ["AWS_REQUEST_PAYER"] = "requester"


# Environment variables that say how to reach remote imagery (credentials, endpoints,
# GDAL's and curl's settings): what a worker on another machine needs of this process's.
ENV_PREFIXES = (
    "AWS_",
    "GS_",
    "GOOGLE_",
    "AZURE_",
    "OSS_",
    "SWIFT_",
    "GDAL_",
    "CPL_",
    "VSI_",
    "CURL_CA_BUNDLE",
    "SSL_CERT_FILE",
)


@dataclass(frozen=True)
class NetworkEnv:
    """The variables of :data:`ENV_PREFIXES` from one process, carried to another (a
    Dask worker started elsewhere, which has its own environment). Printed without
    their values."""

    items: tuple[tuple[str, str], ...]

    @classmethod
    def here(cls) -> NetworkEnv:
        found = (kv for kv in os.environ.items() if kv[0].startswith(ENV_PREFIXES))
        return cls(tuple(sorted(found)))

    def apply(self) -> None:
        """Set them in this process (the run's settings win over the worker's own)."""
        os.environ.update(dict(self.items))

    def __repr__(self) -> str:
        return f"NetworkEnv({', '.join(k for k, _ in self.items)})"


@contextmanager
def opening(path) -> None:
    """Settings for opening ``path``: :data:`OPEN_OPTIONS` for a remote file, where the
    environment does not set them; nothing for a local one."""
    if not isinstance(path, Remote):
        yield
        return
    import rasterio

    options = {k: v for k, v in OPEN_OPTIONS.items() if k not in os.environ}
    with rasterio.Env(**options):
        yield


@dataclass(frozen=True)
class Stamp:
    """What a server says about a file: enough to tell whether it changed."""

    size: int | None
    etag: str | None
    modified: str | None

    def as_list(self) -> list:
        return [self.size, self.etag, self.modified]


def stamp(remote: Remote) -> Stamp:
    """The file's size, ETag and Last-Modified, from one ranged request of its first
    byte (which also shows that the server answers range requests). Only http(s)
    URLs are asked; other file systems give an empty stamp (the URI alone is the
    identity).

    Raises:
        InputError: the server says the file is missing or forbidden, does not answer
            range requests, or cannot be reached.
    """
    url = remote.url
    if url is None:
        return Stamp(None, None, None)
    try:
        with http_get(url, {"Range": "bytes=0-0"}) as response:
            status, headers = response.status, response.headers
    except urllib.error.HTTPError as exc:
        raise InputError(_http_advice(remote, exc.code)) from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise InputError(
            f"{remote}: cannot reach the server ({reason}); check the URL and the "
            "network, and rerun"
        ) from None
    if status != 206:
        raise InputError(
            f"{remote}: the server does not answer range requests (it sends the whole "
            "file for every read), so chips cannot be read from it; download the file "
            "and give the local copy, or serve it from a server that supports ranges"
        )
    size = headers.get("Content-Range", "").rpartition("/")[2]
    return Stamp(
        int(size) if size.isdigit() else None,
        headers.get("ETag"),
        headers.get("Last-Modified"),
    )


def http_get(url: str, headers: dict | None = None):
    """``urllib.request.urlopen`` of ``url`` with the basic authentication GDAL would
    send (``user:password@`` in the URL, or ``GDAL_HTTP_USERPWD``), within
    :data:`PROBE_TIMEOUT_S`; the same errors as ``urlopen``, and ``URLError`` for a URL
    it cannot request."""
    headers = dict(headers or {})
    parts = urllib.parse.urlsplit(url)
    userpwd = os.environ.get("GDAL_HTTP_USERPWD")
    if parts.username is not None:
        userpwd = (
            f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        )
        url = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    if userpwd:
        headers["Authorization"] = "Basic " + base64.b64encode(userpwd.encode()).decode()
    try:
        return urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=PROBE_TIMEOUT_S
        )
    except ValueError as exc:  # http.client.InvalidURL and the like
        raise urllib.error.URLError(str(exc)) from None


def _http_advice(remote: Remote, code: int) -> str:
    if code == 404:
        return f"{remote}: not found on the server (HTTP 404); check the URL"
    if code in (401, 403):
        return (
            f"{remote}: the server refuses access (HTTP {code}); check {CREDENTIALS}, or "
            "the URL's signature, which may have expired"
        )
    return f"{remote}: the server answered HTTP {code}; check the URL, or rerun later"
