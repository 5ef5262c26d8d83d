"""Text normalisation shared by curation, decontamination, prompts and scoring.

One function, so that a training row and a task input that look the same to a person compare equal.
"""

from __future__ import annotations

import re
import unicodedata

# `_x000D_` is how Excel exports a carriage return; real task files carry it inside inputs.
_EXCEL_CR = re.compile(r"_x000D_", re.IGNORECASE)
_ZERO_WIDTH = re.compile("[\u200b\u200c\u200d\u2060\ufeff]")
_HORIZONTAL_SPACE = re.compile(r"[^\S\n]+")
_SPACE_AROUND_NEWLINE = re.compile(r" ?\n ?")
_BLANK_LINES = re.compile(r"\n{3,}")
_ALL_SPACE = re.compile(r"\s+")


def normalize_text(text: str | None) -> str | None:
    """NFKC, `_x000D_` and CR removed, zero-width characters dropped, runs of spaces folded, trimmed.

    Line breaks are kept (they carry meaning in instructions); more than one blank line is folded.
    """
    if text is None:
        return None
    # NFKC and zero-width removal first: they can turn text into a `_x000D_` marker (full-width
    # letters, a zero-width space inside it), and removing one marker can join another.
    text = _ZERO_WIDTH.sub("", unicodedata.normalize("NFKC", text))
    while _EXCEL_CR.search(text):
        text = _EXCEL_CR.sub("", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _HORIZONTAL_SPACE.sub(" ", text)
    text = _SPACE_AROUND_NEWLINE.sub("\n", text)
    text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()


def match_key(text: str | None) -> str | None:
    """The form used to decide that two texts are 'the same': normalised, case-folded, no whitespace."""
    if text is None:
        return None
    return _ALL_SPACE.sub("", normalize_text(text).casefold())
