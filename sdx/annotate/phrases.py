"""Phrases for T2-style sentences from measured defect geometry and tone.

Shared by the synthetic generator (sentences for drawn defects) and the geometric describer
(``describe --no_model``, sentences from a real mask), so both speak alike. Word choices that vary take the
caller's random generator, so a seeded caller gets the same sentence every time.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

NUMBER_WORDS = ("no", "one", "two", "three", "four", "five")


def count_phrase(rng: np.random.Generator, count: int) -> str:
    if count == 1:
        return str(rng.choice(["a single", "one", "a"]))
    if count <= 5:
        return NUMBER_WORDS[count]
    if count <= 12:
        return str(rng.choice(["several", "a group of", "a handful of"]))
    return str(rng.choice(["many", "numerous", "dozens of"] if count >= 24 else ["many", "numerous"]))


def size_adjective(area_share: float) -> str:
    for limit, word in ((0.01, "tiny"), (0.03, "small"), (0.10, "moderate"), (0.25, "large")):
        if area_share < limit:
            return word
    return "extensive"


def tone(diff: float) -> tuple[str, str]:
    """(adverb, comparison) for the measured mean gray difference inside - outside the mask."""
    strength = "slightly" if abs(diff) < 10 else ("clearly" if abs(diff) <= 40 else "much")
    if diff < -5:
        return strength, "darker"
    if diff > 5:
        return strength, "brighter"
    return "", "similar in tone"


def orientation_phrase(rng: np.random.Generator, direction: str, along_rolling: bool) -> str:
    if direction == "none":
        return ""
    verb = str(rng.choice(["running", "oriented", "lying", "extending"]))
    how = {"horizontal": "horizontally", "vertical": "vertically", "diagonal": "diagonally"}[direction]
    phrase = f"{verb} {how}"
    if along_rolling and rng.random() < 0.5:
        phrase += " along the rolling direction"
    return phrase


def position_phrase(rng: np.random.Generator, shares: Sequence[Sequence]) -> str:
    """Where the defect lies, from 3x3 grid shares [(cell, share), ...] sorted largest first."""
    if not shares:
        return "at an unclear location"
    if sum(1 for _, sh in shares if sh >= 0.05) >= 6:
        return str(rng.choice(["spread over most of the image", "across most of the frame"]))
    if shares[0][1] >= 0.6 or len(shares) == 1:
        where = f"the {shares[0][0]}"
    else:
        where = f"the {shares[0][0]} and {shares[1][0]}"
    return str(rng.choice([f"in {where} of the image", f"mainly in {where} region", f"around {where}"]))


def fix_articles(text: str) -> str:
    """Single spaces, and "a" before a vowel made "an"."""
    return re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", " ".join(text.split()))
