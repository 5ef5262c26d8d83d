"""Text normalisation shared by curation, decontamination, prompts and scoring.

One function, so that a training row and a task input that look the same to a person compare equal.
"""

from __future__ import annotations

import functools
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
    return None if text is None else _normalize_unstripped(text).strip()


def _normalize_unstripped(text: str) -> str:
    # NFKC and zero-width removal first: they can turn text into a `_x000D_` marker (full-width
    # letters, a zero-width space inside it), and removing one marker can join another.
    text = _ZERO_WIDTH.sub("", unicodedata.normalize("NFKC", text))
    while _EXCEL_CR.search(text):
        text = _EXCEL_CR.sub("", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _HORIZONTAL_SPACE.sub(" ", text)
    text = _SPACE_AROUND_NEWLINE.sub("\n", text)
    return _BLANK_LINES.sub("\n\n", text)


def match_key(text: str | None) -> str | None:
    """The form used to decide that two texts are 'the same': normalised, case-folded, no whitespace."""
    if text is None:
        return None
    return _ALL_SPACE.sub("", normalize_text(text).casefold())


# Batches are normalised as one string: NFKC and the substitutions above are C loops over the whole
# text, so a million rows cost seconds instead of a minute of per-row calls. The separator is a
# noncharacter that no step changes, matches or composes with, so each piece comes out exactly as
# `normalize_text` alone would make it; a batch that contains it is done row by row.
_SEPARATOR = "\uffff"


def normalize_many(texts: list[str | None]) -> list[str | None]:
    """`normalize_text` of each text (None stays None), computed for the whole list at once."""
    present = [text for text in texts if text is not None]
    if not present or any(_SEPARATOR in text for text in present):
        return [normalize_text(text) for text in texts]
    text = _normalize_unstripped(_SEPARATOR.join(present))
    pieces = iter(piece.strip() for piece in text.split(_SEPARATOR))
    return [None if original is None else next(pieces) for original in texts]


def match_keys_of_normalized(texts: list[str | None]) -> list[str | None]:
    """`match_key` of texts that are already normalised (normalisation is idempotent), for a whole list."""
    present = [text for text in texts if text is not None]
    if not present or any(_SEPARATOR in text for text in present):
        return [None if text is None else _ALL_SPACE.sub("", text.casefold()) for text in texts]
    pieces = iter(_ALL_SPACE.sub("", _SEPARATOR.join(present).casefold()).split(_SEPARATOR))
    return [None if original is None else next(pieces) for original in texts]


# ---- the same two functions over Arrow string arrays, vectorised (curation's million rows) --------
# pyarrow's C++ kernels (utf8proc NFKC, RE2) do each step for a whole array. Their Unicode tables are
# not Python's, so every character whose result could differ (unassigned in Python's `unicodedata`,
# or normalised or case-folded differently alone or between combining marks) sends its row to the
# functions above: the results are exactly theirs.

def _characters_class(code_points) -> str:
    """An RE2 character class of the code points, as ranges."""
    ranges, points = [], sorted(code_points)
    for point in points:
        if ranges and ranges[-1][1] == point - 1:
            ranges[-1][1] = point
        else:
            ranges.append([point, point])
    return "[" + "".join(f"\\x{{{a:X}}}" if a == b else f"\\x{{{a:X}}}-\\x{{{b:X}}}" for a, b in ranges) + "]"


@functools.cache
def _arrow_tables() -> dict:
    import pyarrow as pa
    import pyarrow.compute as pc

    # By Unicode's stability policy, only characters one side has not assigned can normalise
    # differently; private-use characters are the same everywhere.
    unsafe, points = set(), []
    for point in range(0x110000):
        category = unicodedata.category(chr(point))
        if category == "Cn":
            unsafe.add(point)
        elif category not in ("Co", "Cs"):
            points.append(point)
    characters = [chr(point) for point in points]
    whitespace = [point for point, character in zip(points, characters) if character.isspace()]
    for context in ("{}", "A\u0301{}\u0316"):
        texts = [context.format(character) for character in characters]
        ours = pc.utf8_normalize(pa.array(texts, pa.string()), form="NFKC").to_pylist()
        unsafe.update(point for point, text, result in zip(points, texts, ours)
                      if unicodedata.normalize("NFKC", text) != result)
    lowered = pc.utf8_lower(pa.array(characters, pa.string())).to_pylist()
    unfoldable = {point for point, character, lower in zip(points, characters, lowered) if character.casefold() != lower}
    return {"whitespace": "".join(map(chr, whitespace)),
            "horizontal_space": _characters_class(point for point in whitespace if point != 0x0A) + "+",
            "all_space": _characters_class(whitespace) + "+",
            "zero_width": _characters_class(map(ord, "\u200b\u200c\u200d\u2060\ufeff")),
            "needs_steps": "(?i:_x000D_)|  |" + _characters_class(set(whitespace + list(map(ord, "\u200b\u200c\u200d\u2060\ufeff")))
                                                                  - {0x20}),
            "unsafe_normalize": _characters_class(unsafe), "unsafe_fold": _characters_class(unfoldable | unsafe)}


def _with_python_rows(array, result, unsafe: str, function):
    """`result`, with the rows of `array` that contain an `unsafe` character computed by `function`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    mask = pc.fill_null(pc.match_substring_regex(array, unsafe), False)
    if not pc.any(mask).as_py():
        return result
    redone = [function(text) for text in array.filter(mask).to_pylist()]
    return pc.replace_with_mask(result, mask, pa.array(redone, pa.string()))


def _one_chunk(array):
    import pyarrow as pa

    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def _replaced(text, pattern: str, replacement: str):
    """Regex replacement, run only on the rows that match (most rows have nothing to replace)."""
    import pyarrow.compute as pc

    mask = pc.fill_null(pc.match_substring_regex(text, pattern), False)
    if not pc.any(mask).as_py():
        return text
    return pc.replace_with_mask(text, mask, pc.replace_substring_regex(text.filter(mask), pattern, replacement))


def _normalized_after_nfkc(text):
    import pyarrow.compute as pc

    tables = _arrow_tables()
    text = _replaced(text, tables["zero_width"], "")
    while pc.any(pc.fill_null(pc.match_substring_regex(text, "_x000D_", ignore_case=True), False)).as_py():
        text = _replaced(text, "(?i)_x000D_", "")
    text = _replaced(text, "\r\n?", "\n")
    text = _replaced(text, tables["horizontal_space"], " ")
    text = _replaced(text, " ?\n ?", "\n")
    return _replaced(text, "\n{3,}", "\n\n")


def normalize_arrow(array):
    """`normalize_text` of each string of an Arrow string array (nulls stay null)."""
    import pyarrow.compute as pc

    tables = _arrow_tables()
    array = _one_chunk(array)
    text = pc.utf8_normalize(array, form="NFKC")
    # Only rows with a zero-width character, a marker, or whitespace other than single spaces change
    # beyond NFKC and trimming; the steps run on those alone.
    mask = pc.fill_null(pc.match_substring_regex(text, tables["needs_steps"]), False)
    if pc.any(mask).as_py():
        text = pc.replace_with_mask(text, mask, _normalized_after_nfkc(text.filter(mask)))
    text = pc.utf8_trim(text, characters=tables["whitespace"])
    return _with_python_rows(array, text, tables["unsafe_normalize"], normalize_text)


def match_keys_arrow(array):
    """`match_key` of each string of an Arrow array of already normalised strings (nulls stay null)."""
    import pyarrow.compute as pc

    tables = _arrow_tables()
    array = _one_chunk(array)
    keys = _replaced(pc.utf8_lower(array), tables["all_space"], "")
    return _with_python_rows(array, keys, tables["unsafe_fold"], lambda text: _ALL_SPACE.sub("", text.casefold()))
