"""Text levels T0-T4, the 25 classes, and the prompts built from them.

The levels follow the second version of the SteelDefectX paper (arXiv 2603.21824):

====  =============================  ==========================================================
T0    built                          "A photo of steel surface defect: {class}."
T1    class_descriptions.json        one sentence per class (name, appearance, cause)
T2    natural_language_description   free-form per-image description
T3    structured_attributes          nine fields (Defect type ... Saliency)
T4    template_sentence              T3 linearised by the authors' fixed template
====  =============================  ==========================================================

The first version's names are accepted as aliases (its "T3 (fine, refined)" is our T2).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

# (class name, case-sensitive file prefix, official train count, official val count)
CLASS_TABLE: tuple[tuple[str, str, int, int], ...] = (
    ("Bright scratch", "bs", 301, 128),
    ("Crazing", "cracking", 210, 90),
    ("Crease", "crease", 53, 22),
    ("Crescent gap", "cg", 172, 73),
    ("Dark scratches", "ds", 234, 100),
    ("Finishing roll printing", "frp", 143, 60),
    ("Inclusion", "in", 557, 238),
    ("Iron scale compression", "Isc", 140, 60),
    ("Iron sheet ash", "Isa", 86, 36),
    ("Oil spot", "os", 349, 149),
    ("Oxide scale of plate system", "Ops", 45, 18),
    ("Oxide scale of temperature system", "Ots", 143, 60),
    ("Patches", "pa", 210, 90),
    ("Pitted surface", "ps", 210, 90),
    ("Punching", "pu", 280, 119),
    ("Red iron sheet", "ris", 278, 119),
    ("Rolled in scale", "rs", 210, 90),
    ("Rolled pit", "rp", 35, 15),
    ("Secondary rust skin", "Srs", 139, 59),
    ("Silk spot", "ss", 405, 173),
    ("Slag inclusion", "si", 167, 71),
    ("Waist folding", "wf", 139, 59),
    ("Water spot", "ws", 490, 210),
    ("Welding line", "wl", 350, 150),
    ("White rust", "wr", 108, 45),
)
CLASS_NAMES: tuple[str, ...] = tuple(row[0] for row in CLASS_TABLE)
PREFIX_TO_CLASS: dict[str, str] = {row[1]: row[0] for row in CLASS_TABLE}
CLASS_TO_PREFIX: dict[str, str] = {row[0]: row[1] for row in CLASS_TABLE}

LEVELS: tuple[str, ...] = ("t0", "t1", "t2", "t3", "t4")
LEVEL_FIELDS = {
    "t1": "class_descriptions.json",
    "t2": "natural_language_description",
    "t3": "structured_attributes",
    "t4": "template_sentence",
}
# First-version names and descriptive names, mapped onto the second version's levels.
LEVEL_ALIASES: dict[str, str] = {
    "class_name": "t0",
    "name": "t0",
    "coarse": "t1",
    "class_description": "t1",
    "fine": "t2",
    "refined": "t2",
    "description": "t2",
    "v1-t3": "t2",
    "v1_t3": "t2",
    "attributes": "t3",
    "structured": "t4",
    "template": "t4",
}

T0_TEMPLATE = "A photo of steel surface defect: {}."

# The builder's config names and the level each one puts in the `caption` column.
CONFIG_LEVELS: dict[str, str] = {"default": "t1", "t0": "t0", "coarse": "t1", "fine": "t2", "attributes": "t3",
                                 "structured": "t4"}
LEVEL_CONFIGS: dict[str, str] = {"t0": "t0", "t1": "coarse", "t2": "fine", "t3": "attributes", "t4": "structured"}
# Where a record lacks a level, its caption is the first non-empty level of this chain (docs/dataset.md).
FALLBACK_CHAIN: dict[str, tuple[str, ...]] = {"t0": (), "t1": ("t0",), "t2": ("t4", "t1"), "t3": ("t1",),
                                              "t4": ("t1",)}

# The nine T3 fields, in the release's order.
T3_FIELDS: tuple[str, ...] = (
    "Defect type",
    "Shape",
    "Direction",
    "Spatial Distribution",
    "Number of Defects",
    "Position",
    "Scale",
    "Polarity",
    "Saliency",
)
SHAPES = ("linear", "curved", "elongated", "circular", "irregular", "fragmented", "network-like",
          "spot-like", "patch-like", "diffuse", "unclear")
DIRECTIONS = ("horizontal", "vertical", "diagonal", "none")
DISTRIBUTIONS = ("isolated", "clustered", "scattered", "unclear")
SCALES = ("tiny", "small", "medium", "large", "extensive")
POLARITIES = ("dark", "bright", "neutral")
SALIENCIES = ("low", "medium", "high")
NUMBERS = ("one", "two", "three", "four", "five", "multiple")
GRID_CELLS = ("top-left", "top-center", "top-right", "middle-left", "center", "middle-right",
              "bottom-left", "bottom-center", "bottom-right")


def normalize_level(level: str) -> str:
    """Return the canonical level name ("t0".."t4") for a level or one of its aliases."""
    key = str(level).strip().lower()
    key = LEVEL_ALIASES.get(key, key)
    if key not in LEVELS:
        raise ValueError(f"unknown text level {level!r}: use one of {', '.join(LEVELS)} "
                         f"or an alias ({', '.join(sorted(LEVEL_ALIASES))})")
    return key


def parse_levels(text: str, flag: str) -> list[str]:
    """The canonical levels of a comma list given to ``flag`` (e.g. "t0,coarse" -> ["t0", "t1"]); a ValueError
    naming the flag for an unknown one."""
    try:
        return [normalize_level(lv) for lv in text.split(",") if lv.strip()]
    except ValueError as err:
        raise ValueError(f"{flag}: {err}") from None


def t0_prompt(class_name: str) -> str:
    return T0_TEMPLATE.format(class_name)


def _position_phrase(position: Sequence[Sequence[Any]]) -> str:
    cells = [p[0] for p in position[:2]]
    if not cells:
        return "an unclear location"
    if len(cells) == 1:
        return cells[0]
    return f"{cells[0]} and {cells[1]}"


def render_t4(attrs: Mapping[str, Any]) -> str:
    """Linearise T3 exactly as the authors' template does (reference section 2)."""
    text = (f"A {attrs['Scale']} {attrs['Polarity']} {attrs['Defect type']} is observed on the steel surface. "
            f"It has a {attrs['Shape']} shape. ")
    if attrs["Direction"] != "none":
        text += f"It extends in a {attrs['Direction']} direction. "
    text += (f"The defects are {attrs['Spatial Distribution']}, consisting of {attrs['Number of Defects']} "
             f"region(s), mainly located at {_position_phrase(attrs['Position'])}. ")
    text += f"The defect exhibits {attrs['Saliency']} saliency."
    return text


def render_t3(attrs: Mapping[str, Any]) -> str:
    """T3 as training text: 'field: value' pairs, Position as cells with their shares."""
    parts = []
    for field in T3_FIELDS:
        value = attrs.get(field)
        if field == "Position":
            value = ", ".join(f"{cell} ({share:.2f})" for cell, share in (value or [])) or "unclear"
        parts.append(f"{field}: {value}")
    return "; ".join(parts) + "."


def position_to_records(position: Sequence[Sequence[Any]] | None) -> list[dict[str, Any]]:
    """[[cell, share], ...] (release form) -> [{"cell":..., "share":...}, ...] (dataset feature form)."""
    return [{"cell": str(cell), "share": float(share)} for cell, share in (position or [])]


def position_from_records(records: Sequence[Mapping[str, Any]] | None) -> list[list[Any]]:
    return [[r["cell"], r["share"]] for r in (records or [])]


def attributes_from_feature(t3: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A row's ``t3`` feature (Position as [{cell, share}]) in the release form (Position as [[cell, share]])."""
    if not t3:
        return None
    return dict(t3, Position=position_from_records(t3.get("Position")))


def level_texts(class_name: str, t1: str | None, t2: str | None, attrs: Mapping[str, Any] | None,
                t4: str | None) -> dict[str, str]:
    """The five levels as text, "" where missing: T0 built, T3 rendered, an empty T4 rendered from T3."""
    t4 = "" if is_missing_text(t4) else str(t4)
    if not t4 and attrs:
        t4 = render_t4(attrs)
    return {"t0": t0_prompt(class_name), "t1": t1 or "", "t2": "" if is_missing_text(t2) else str(t2),
            "t3": render_t3(attrs) if attrs else "", "t4": t4}


def row_level_texts(row: Mapping[str, Any]) -> dict[str, str]:
    """`level_texts` of one dataset row (columns class_name, t1, t2, t3, t4)."""
    return level_texts(row["class_name"], row.get("t1"), row.get("t2"), attributes_from_feature(row.get("t3")),
                       row.get("t4"))


def resolve_caption(texts: Mapping[str, str], level: str) -> tuple[str, str]:
    """(caption, level used): ``texts[level]``, else the first non-empty level of ``FALLBACK_CHAIN[level]``.

    Returns ("", level) when the whole chain is empty."""
    for candidate in (level, *FALLBACK_CHAIN[level]):
        if not is_missing_text(texts.get(candidate)):
            return texts[candidate], candidate
    return "", level


def is_missing_text(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (
        isinstance(value, str) and not value.strip())
