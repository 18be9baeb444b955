"""Ready styles: every layer geodetect writes opens in QGIS in colour.

A style is QGIS's own QML. In a GeoPackage it goes into the ``layer_styles`` table as the
layer's default style (QGIS applies it when the layer is added); beside any other file
it is ``<name>.qml``, which QGIS loads with the file. Styles exist for the detections
(by score), the coverage, parcel statuses, change statuses and the layers of a review.
"""

from __future__ import annotations

import datetime
import os
import sqlite3
from pathlib import Path
from xml.sax.saxutils import quoteattr

# Fill colours (R, G, B) by category; alpha is added per style.
_PARCEL = {
    "new": ((228, 26, 28), "new: more pools than the roll lists"),
    "missing": ((255, 127, 0), "missing: fewer pools than the roll lists"),
    "agrees": ((77, 175, 74), "agrees with the roll"),
    "pool": ((55, 126, 184), "pool"),
    "no_pool": ((190, 190, 190), "no pool"),
    "not_covered": ((120, 120, 120), "not covered by the imagery"),
}
_CHANGE = {
    "new": ((77, 175, 74), "new"),
    "removed": ((228, 26, 28), "removed"),
    "resized": ((255, 127, 0), "resized"),
    "kept": ((55, 126, 184), "kept"),
    "not_covered": ((150, 150, 150), "not covered by the other flight"),
}
# Score classes of a detection layer: (lower, upper, colour).
_SCORES = (
    (0.0, 0.5, (255, 255, 51)),
    (0.5, 0.7, (255, 170, 0)),
    (0.7, 0.9, (255, 60, 0)),
    (0.9, 1.0001, (200, 0, 80)),
)


def _fill(name: str, rgb, *, fill_alpha: int, width: float = 0.5, dash: bool = False) -> str:
    r, g, b = rgb
    options = {
        "color": f"{r},{g},{b},{fill_alpha}",
        "style": "solid" if fill_alpha else "no",
        "outline_color": f"{r},{g},{b},255",
        "outline_style": "dash" if dash else "solid",
        "outline_width": f"{width:g}",
        "outline_width_unit": "MM",
        "joinstyle": "miter",
    }
    items = "".join(f'<Option type="QString" name="{k}" value="{v}"/>' for k, v in options.items())
    props = "".join(f'<prop k="{k}" v="{v}"/>' for k, v in options.items())
    return (
        f'<symbol type="fill" name="{name}" alpha="1" clip_to_extent="1" force_rhr="0">'
        '<layer class="SimpleFill" enabled="1" locked="0" pass="0">'
        f'<Option type="Map">{items}</Option>{props}'
        "</layer></symbol>"
    )


def _qml(renderer: str) -> str:
    return (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        f'<qgis version="3.22.0" styleCategories="Symbology">{renderer}</qgis>\n'
    )


def _categorized(field: str, classes: dict, *, fill_alpha: int = 110, width: float = 0.5) -> str:
    categories, symbols = [], []
    for i, (value, (rgb, label)) in enumerate(classes.items()):
        categories.append(
            f'<category render="true" symbol="{i}" value={quoteattr(value)} '
            f"label={quoteattr(label)}/>"
        )
        symbols.append(_fill(str(i), rgb, fill_alpha=fill_alpha, width=width))
    return _qml(
        f'<renderer-v2 type="categorizedSymbol" attr={quoteattr(field)} symbollevels="0" '
        'enableorderby="0" forceraster="0">'
        f"<categories>{''.join(categories)}</categories>"
        f"<symbols>{''.join(symbols)}</symbols></renderer-v2>"
    )


def detections_qml() -> str:
    """Boxes outlined by score (no fill, so the imagery shows through)."""
    ranges, symbols = [], []
    for i, (lower, upper, rgb) in enumerate(_SCORES):
        label = f"score {lower:g} - {min(upper, 1.0):g}"
        ranges.append(
            f'<range render="true" symbol="{i}" lower="{lower:g}" upper="{upper:g}" '
            f"label={quoteattr(label)}/>"
        )
        symbols.append(_fill(str(i), rgb, fill_alpha=0, width=0.6))
    return _qml(
        '<renderer-v2 type="graduatedSymbol" attr="score" graduatedMethod="GraduatedColor" '
        'symbollevels="0" enableorderby="0" forceraster="0">'
        f"<ranges>{''.join(ranges)}</ranges><symbols>{''.join(symbols)}</symbols>"
        "</renderer-v2>"
    )


def coverage_qml() -> str:
    """The looked-at ground: a dashed outline over a faint fill."""
    return _qml(
        '<renderer-v2 type="singleSymbol" symbollevels="0" enableorderby="0" forceraster="0">'
        f"<symbols>{_fill('0', (0, 160, 200), fill_alpha=25, width=0.4, dash=True)}</symbols>"
        "</renderer-v2>"
    )


def parcels_qml() -> str:
    return _categorized("status", _PARCEL)


def change_qml() -> str:
    return _categorized("status", _CHANGE)


def review_qml() -> str:
    """Detections to review, by score stratum (0: the lowest scores)."""
    strata = {
        "0": ((255, 255, 51), "stratum 0 (lowest scores)"),
        "1": ((255, 170, 0), "stratum 1"),
        "2": ((255, 60, 0), "stratum 2"),
        "3": ((200, 0, 80), "stratum 3 (highest scores)"),
    }
    return _categorized("stratum", strata, fill_alpha=0, width=0.8)


def squares_qml() -> str:
    """Search squares: a bold dashed outline."""
    return _qml(
        '<renderer-v2 type="singleSymbol" symbollevels="0" enableorderby="0" forceraster="0">'
        f"<symbols>{_fill('0', (255, 0, 255), fill_alpha=0, width=0.8, dash=True)}</symbols>"
        "</renderer-v2>"
    )


def missed_qml() -> str:
    """Pools the reviewer drew as missed."""
    return _qml(
        '<renderer-v2 type="singleSymbol" symbollevels="0" enableorderby="0" forceraster="0">'
        f"<symbols>{_fill('0', (0, 200, 255), fill_alpha=90, width=0.6)}</symbols>"
        "</renderer-v2>"
    )


def errors_qml() -> str:
    """evaluate --errors: false alarms outlined by kind, misses filled."""
    kinds = {
        "duplicate": ((255, 0, 255), "duplicate (a second box on a matched object)"),
        "extra": ((255, 140, 0), "extra (a box on a found object, not matching it)"),
        "loose": ((255, 220, 0), "loose (on an object nobody found, badly placed)"),
        "background": ((230, 0, 0), "background (nothing there)"),
        "missed": ((0, 200, 255), "missed (an object no box matched)"),
    }
    return _categorized("kind", kinds, fill_alpha=60, width=0.8)


STYLES = {
    "detections": detections_qml,
    "coverage": coverage_qml,
    "parcels": parcels_qml,
    "change": change_qml,
    "review": review_qml,
    "squares": squares_qml,
    "missed": missed_qml,
    "errors": errors_qml,
}


def qml_path(path: str | os.PathLike) -> Path:
    """Where QGIS looks for a file's default style: ``<name>.qml`` beside it."""
    return Path(path).with_suffix(".qml")


def write_gpkg_style(path: str | os.PathLike, layer: str, qml: str) -> None:
    """Store ``qml`` as ``layer``'s default style in the GeoPackage's ``layer_styles``
    table (the table QGIS reads and writes), registered as an attributes table."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    with sqlite3.connect(path) as db:
        db.execute(_CREATE_STYLES)
        db.execute(
            "INSERT OR IGNORE INTO gpkg_contents (table_name, data_type, identifier, "
            "last_change) VALUES ('layer_styles', 'attributes', 'layer_styles', ?)",
            (now,),
        )
        found = db.execute(
            "SELECT column_name FROM gpkg_geometry_columns WHERE table_name = ?", (layer,)
        ).fetchone()
        column = found[0] if found else "geom"
        db.execute("UPDATE layer_styles SET useAsDefault = 0 WHERE f_table_name = ?", (layer,))
        db.execute(
            "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, "
            "f_geometry_column, styleName, styleQML, styleSLD, useAsDefault, description, "
            "owner, ui, update_time) VALUES ('', '', ?, ?, ?, ?, '', 1, ?, '', '', ?)",
            (layer, column, f"geodetect {layer}", qml, f"geodetect's style for {layer}", now),
        )


_CREATE_STYLES = (
    "CREATE TABLE IF NOT EXISTS layer_styles ("
    "id INTEGER PRIMARY KEY AUTOINCREMENT, f_table_catalog TEXT(256), "
    "f_table_schema TEXT(256), f_table_name TEXT(256), f_geometry_column TEXT(256), "
    "styleName TEXT(30), styleQML TEXT, styleSLD TEXT, useAsDefault BOOLEAN, "
    "description TEXT, owner TEXT(30), ui TEXT(30), update_time DATETIME DEFAULT "
    "(strftime('%Y-%m-%dT%H:%M:%fZ','now')))"
)


def write_style(path: str | os.PathLike, layer: str, kind: str, *, gpkg: bool) -> None:
    """The style of ``kind`` (a key of :data:`STYLES`) for the layer just written at
    ``path``: into a GeoPackage, or as ``<name>.qml`` beside any other file."""
    qml = STYLES[kind]()
    if gpkg:
        write_gpkg_style(path, layer, qml)
    else:
        Path(qml_path(path)).write_text(qml, encoding="utf-8")
