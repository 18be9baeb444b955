"""Imagery found through STAC: an item or an item collection (a file or a URL), or a
search of a STAC API (``--stac URL --collection C --bbox ... --datetime ...``).

Each item gives one input: its asset chosen by key (``--asset``) or, by default, its
visual picture (the asset with role ``visual``, else keys ``visual``, ``image``, ``rgb``,
else its only GeoTIFF or JPEG 2000). The input is a
:class:`~geodetect.io.remote.Remote` (or a local path for an asset on disk) whose journal
identity is the item's id, asset key and ``updated`` time, not its URL: a signed URL
signed again for the rerun is the same input.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from geodetect.errors import InputError
from geodetect.io.remote import Remote, is_remote, redact

# The file names that hold STAC items and item collections.
STAC_SUFFIXES = (".json", ".geojson")
# Asset keys that hold an item's picture, in order of preference.
VISUAL_KEYS = ("visual", "image", "rgb", "ortho", "orthophoto")
_IMAGE_TYPES = ("image/tiff", "image/jp2", "application/x-geotiff")


def is_stac(text: str) -> bool:
    """Whether an input names a STAC item or item collection (a ``.json`` or
    ``.geojson`` file or URL)."""
    name = text.split("?", 1)[0].lower()
    return name.endswith(STAC_SUFFIXES)


@dataclass(frozen=True)
class Search:
    """A STAC API search: the API's URL and the search's terms."""

    url: str
    collections: tuple[str, ...] = ()
    bbox: tuple[float, float, float, float] | None = None
    datetime: str | None = None
    max_items: int | None = None

    def items(self) -> list:
        from pystac_client import Client
        from pystac_client.exceptions import APIError

        where = redact(self.url)
        try:
            client = Client.open(self.url, timeout=60)
            search = client.search(
                collections=list(self.collections) or None,
                bbox=self.bbox,
                datetime=self.datetime,
                max_items=self.max_items,
            )
            found = list(search.items())
        except APIError as exc:
            raise InputError(
                f"--stac {where}: the STAC API refused the search ({_short(exc)}); check "
                "--collection, --bbox and --datetime"
            ) from None
        except (OSError, ValueError) as exc:  # requests' errors are OSErrors
            raise InputError(
                f"--stac {where}: cannot search this STAC API ({_short(exc)}); check the URL "
                "and the network"
            ) from None
        if not found:
            terms = ", ".join(
                f"{k} {v}"
                for k, v in (
                    ("collection", ",".join(self.collections)),
                    ("bbox", ",".join(f"{c:g}" for c in self.bbox or ())),
                    ("datetime", self.datetime),
                )
                if v
            )
            raise InputError(
                f"--stac {where}: the search ({terms or 'no terms'}) found no items; widen "
                "--bbox or --datetime, or check --collection"
            )
        return found


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def read_items(source: str) -> list:
    """The items of a STAC item or item collection file or URL."""
    import pystac

    where = redact(source)
    try:
        data = pystac.StacIO.default().read_json(source)
    except FileNotFoundError:
        raise InputError(f"{where}: no such STAC file; check the path") from None
    except Exception as exc:  # noqa: BLE001 - HTTP, JSON and file errors alike, in one line
        raise InputError(f"{where}: cannot read this STAC file ({_short(exc)})") from None
    kind = data.get("type") if isinstance(data, dict) else None
    try:
        if kind == "Feature":
            items = [pystac.Item.from_dict(data, href=source, migrate=True)]
        elif kind == "FeatureCollection":
            collection = pystac.ItemCollection.from_dict(data, preserve_dict=False)
            items = list(collection)
            for item in items:  # relative asset hrefs are relative to the file
                if item.get_self_href() is None:
                    item.set_self_href(_sibling(source, f"{item.id}.json"))
        else:
            raise InputError(
                f"{where}: is not a STAC item or item collection (its type is {kind!r}); "
                "give items (a catalogue's items, or a search's results)"
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{where}: is not a valid STAC item ({_short(exc)})") from None
    if not items:
        raise InputError(f"{where}: the item collection holds no items")
    return items


def _sibling(source: str, name: str) -> str:
    """A file's name beside ``source`` (a path or URL)."""
    if is_remote(source):
        return source.split("?", 1)[0].rsplit("/", 1)[0] + "/" + name
    return str(Path(source).resolve().parent / name)


def item_input(item, asset: str | None = None) -> Path | Remote:
    """The input an item gives: its chosen asset, as a local path or a remote file
    whose identity is the item's (id, asset, updated)."""
    key = asset or _visual_key(item)
    if key not in item.assets:
        raise InputError(
            f"STAC item {item.id}: has no asset {key!r} (it has {', '.join(item.assets)}); "
            "choose one with --asset"
        )
    href = item.assets[key].get_absolute_href() or item.assets[key].href
    updated = item.properties.get("updated") or item.properties.get("datetime") or ""
    if is_remote(href):
        return Remote(href, identity=f"stac:{item.id}/{key}@{updated}")
    path = Path(href[len("file://") :] if href.startswith("file://") else href)
    return path


def _visual_key(item) -> str:
    assets = item.assets
    for key, value in assets.items():
        if "visual" in (value.roles or []):
            return key
    for key in VISUAL_KEYS:
        if key in assets:
            return key
    images = [
        k for k, v in assets.items() if (v.media_type or "").split(";")[0].strip() in _IMAGE_TYPES
    ]
    if len(images) == 1:
        return images[0]
    raise InputError(
        f"STAC item {item.id}: has no visual asset (assets: {', '.join(assets) or 'none'}); "
        "choose one with --asset"
    )


def stac_inputs(
    inputs: Iterable[str | os.PathLike], *, search: Search | None = None, asset: str | None = None
) -> list:
    """``inputs`` with each STAC item or item collection replaced by the inputs its
    items give, followed by those of ``search``'s items; everything else as it is."""
    out: list = []
    for item in inputs:
        text = os.fspath(item) if not isinstance(item, Remote) else None
        if text is not None and is_stac(text):
            out.extend(item_input(i, asset) for i in read_items(text))
        else:
            out.append(item)
    if search is not None:
        out.extend(item_input(i, asset) for i in search.items())
    return out
