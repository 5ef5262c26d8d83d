"""Text cleaning for what is trained on and prompted with, and normalisation for what is compared.

`clean_text` removes only what is noise in every text (Excel's `_x000D_`, CR line endings, zero-width
characters outside emoji sequences, blank lines before and whitespace after the text): training rows
and task prompts keep their indentation, full-width punctuation, circled numbers and markdown, as
the base model's tokenizer sees them (llm-jp-3's applies no NFKC and has pieces for runs of spaces).
`normalize_text` (NFKC, spaces folded) and `match_key` are for comparing texts only: exact and near
dedup, decontamination, exact-match scoring, the Japanese share and repetition measures, so that
a training row and a task input that look the same to a person compare equal.
"""

from __future__ import annotations

import functools
import re
import threading
import unicodedata

# `_x000D_` is how Excel exports a carriage return; real task files carry it inside inputs.
_EXCEL_CR = re.compile(r"_x000D_", re.IGNORECASE)
# Pictographs (Extended_Pictographic, approximated by its blocks) and what may end one before a
# zero-width joiner: the emoji presentation selector U+FE0F (skin tones lie in the pictograph block).
EMOJI = "\u00a9\u00ae\u203c\u2049\u2122\u2139\u2194-\u21aa\u231a-\u23ff\u24c2\u25aa-\u27bf\u2934\u2935\u2b05-\u2b55\u3030\u303d\u3297\u3299\U0001F000-\U0001FAFF"
# Zero-width characters are invisible noise, except the joiner inside an emoji sequence (👩‍👩‍👧‍👦 is one
# family, not four people): there it is kept.
_ZERO_WIDTH = re.compile(f"[\u200b\u200c\u2060\ufeff]|(?<![{EMOJI}\ufe0f])\u200d|\u200d(?![{EMOJI}])")
_HORIZONTAL_SPACE = re.compile(r"[^\S\n]+")
_SPACE_AROUND_NEWLINE = re.compile(r" ?\n ?")
_BLANK_LINES = re.compile(r"\n{3,}")
_ALL_SPACE = re.compile(r"\s+")
_LEADING_BLANK_LINES = re.compile(r"\A(?:[^\S\n]*\n)+")


def clean_text(text: str | None) -> str | None:
    """The text as written, without what is noise in every case: `_x000D_` markers, CR line endings
    (CRLF and CR become LF), zero-width characters (but the joiner inside an emoji sequence), blank
    lines before the text and whitespace after it. Indentation, width variants and symbols stay."""
    if text is None:
        return None
    return _LEADING_BLANK_LINES.sub("", _without_noise(text).rstrip())


def _without_noise(text: str) -> str:
    """Zero-width characters (but the joiner inside an emoji sequence) and `_x000D_` markers dropped,
    CRLF and CR made LF: what both the training text and the match key lose."""
    text = _ZERO_WIDTH.sub("", text)
    while _EXCEL_CR.search(text):  # removing one marker can join another
        text = _EXCEL_CR.sub("", text)
    return text.replace("\r\n", "\n").replace("\r", "\n")


def normalize_text(text: str | None) -> str | None:
    """NFKC, `_x000D_` and CR removed, zero-width characters dropped (but the joiner inside an emoji
    sequence), runs of spaces folded, trimmed.

    Line breaks are kept (they carry meaning in instructions); more than one blank line is folded.
    """
    return None if text is None else _normalize_unstripped(text).strip()


def _normalize_unstripped(text: str) -> str:
    # NFKC and zero-width removal first: they can turn text into a `_x000D_` marker (full-width
    # letters, a zero-width space inside it), and removing one marker can join another.
    text = _HORIZONTAL_SPACE.sub(" ", _without_noise(unicodedata.normalize("NFKC", text)))
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
# not Python's, so every row holding a character whose result could differ (unassigned in Python's
# `unicodedata`, or normalised or case-folded differently alone or between combining marks) is
# redone by the functions above: the results are exactly theirs. Characters are checked as they
# first appear in the data (a corpus uses a few thousand) and in the common blocks, not all 0x110000.

_WHITESPACE = "".join(chr(point) for point in range(0x3001) if chr(point).isspace())  # none lies higher
_ZERO_WIDTH_CHARACTERS = "\u200b\u200c\u200d\u2060\ufeff"
_VERDICTS: dict[int, tuple[bool, bool]] = {}  # code point -> (may normalise differently, may case-fold differently)
# Curation's worker threads verify characters as their batches bring them (tunesmith.data.curate_checks): one
# adding verdicts while another read them all ("dictionary changed size during iteration") failed a curation.
# Verdicts are added and read whole under the lock; a verdict, once given, never changes.
_VERDICTS_LOCK = threading.Lock()
_SAFE_CLASSES: dict[int, tuple[int, str]] = {}  # which -> (verdicts it was made from, _safe_class)


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
def _patterns() -> dict:
    points = list(map(ord, _WHITESPACE))
    return {"horizontal_space": _characters_class(point for point in points if point != 0x0A) + "+",
            "all_space": _characters_class(points) + "+",
            "zero_width": _characters_class(map(ord, _ZERO_WIDTH_CHARACTERS.replace("\u200d", ""))),
            "leading_blank_lines": "\\A(?:" + _characters_class(point for point in points if point != 0x0A) + "*\n)+",
            # A row that none of clean_text's steps but the trailing trim changes matches none of these.
            "needs_cleaning": "(?i:_x000D_)|\r|\\A" + _characters_class(point for point in points if point != 0x0A)
                              + "*\n|" + _characters_class(map(ord, _ZERO_WIDTH_CHARACTERS.replace("\u200d", ""))),
            "needs_steps": "(?i:_x000D_)|  |" + _characters_class(set(points + list(map(ord, _ZERO_WIDTH_CHARACTERS)))
                                                                  - {0x20})}


def _verdicts(points) -> None:
    """Compare Python's and pyarrow's NFKC (alone and between combining marks) and case folding of
    code points not seen before. By Unicode's stability policy only characters one side has not
    assigned can differ; private-use characters are the same everywhere. The joiner is Python's
    alone: whether it stays depends on its neighbours (emoji sequences)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    new = [point if isinstance(point, int) else ord(point) for point in points]
    new = [point for point in new if point not in _VERDICTS]
    if not new:
        return
    characters = [chr(point) for point in new]
    normalise = [unicodedata.category(character) == "Cn" or point == 0x200D for point, character in zip(new, characters)]
    for context in ("{}", "A\u0301{}\u0316"):
        texts = [context.format(character) for character in characters]
        theirs = pc.utf8_normalize(pa.array(texts, pa.string()), form="NFKC").to_pylist()
        normalise = [flag or unicodedata.normalize("NFKC", text) != result
                     for flag, text, result in zip(normalise, texts, theirs)]
    lowered = pc.utf8_lower(pa.array(characters, pa.string())).to_pylist()
    verdicts = {}
    for point, character, lower, flag in zip(new, characters, lowered, normalise):
        category = unicodedata.category(character)
        flag = flag and category not in ("Co", "Cs")
        verdicts[point] = (flag, flag or character.casefold() != lower)
    with _VERDICTS_LOCK:
        _VERDICTS.update(verdicts)


# Verified up front (~0.1 s): Latin, punctuation, kana, common kanji, full-width forms. Other characters
# are verified when rows holding them first turn up.
_COMMON_BLOCKS = [(0x00, 0x17F), (0x2000, 0x206F), (0x3000, 0x30FF), (0x4E00, 0x9FFF), (0xFF00, 0xFFEF)]


@functools.cache
def _seeded() -> None:
    _verdicts([point for low, high in _COMMON_BLOCKS for point in range(low, high + 1)])


def _safe_class(which: int) -> str:
    """An RE2 class matching any character not verified safe for `which` (0: normalise, 1: fold). Made again
    only when characters were verified since (a batch's every field asks; making it takes ~13 ms)."""
    known, made = _SAFE_CLASSES.get(which, (-1, ""))
    if known != len(_VERDICTS):
        with _VERDICTS_LOCK:
            known, verdicts = len(_VERDICTS), list(_VERDICTS.items())
        made = "[^" + _characters_class(point for point, verdict in verdicts if not verdict[which])[1:]
        _SAFE_CLASSES[which] = (known, made)
    return made


@functools.cache
def _not_plain() -> str:
    """RE2: what makes a text not plain (`plain_rows`): a character outside the plain ones, or what
    `clean_text` would remove other than trailing space (a `_x000D_` marker, blank lines at the start)."""
    _seeded()

    def folds_alike(text: str) -> bool:
        return all(ord(character) in _VERDICTS and not _VERDICTS[ord(character)][1] for character in text)

    plain = [point for low, high in _COMMON_BLOCKS for point in range(low, high + 1)
             if (point in (0x09, 0x0A) or not unicodedata.category(chr(point)).startswith("C"))
             and not any(_VERDICTS[point]) and not unicodedata.combining(chr(point))
             and folds_alike(unicodedata.normalize("NFKC", chr(point)))]
    return "[^" + _characters_class(plain)[1:] + "|" + _patterns()["needs_cleaning"]


def plain_rows(array):
    """Whether each text of an Arrow string array is plain: made only of characters of the common blocks
    (Latin, punctuation, kana, common kanji, full-width forms) that Python and pyarrow normalise and
    case-fold alike (their NFKC too), that are no combining marks, no controls (but tab and line feed)
    and no format characters (zero-width, bidirectional); holding no `_x000D_` marker and not opening
    with blank lines. In such a text, and in its normalised form, the searches for noise, for
    characters to verify and for characters that never train find nothing: they run on the other rows
    alone (`normalize_arrow`, `clean_arrow`, `match_keys_arrow`, `matching`). Nulls: False."""
    import pyarrow.compute as pc

    return pc.invert(pc.fill_null(pc.match_substring_regex(_one_chunk(array), _not_plain()), True))


def matching(array, pattern: str, plain=None):
    """Whether each text of an Arrow string array holds a match of the RE2 `pattern` (nulls: False);
    rows that `plain` (`plain_rows`) marks are not searched (False): the pattern finds nothing in them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if plain is None:
        return pc.fill_null(pc.match_substring_regex(array, pattern), False)
    searched = pc.invert(plain)
    nothing = pc.and_(plain, pa.scalar(False))  # all False
    return pc.replace_with_mask(nothing, searched, matching(array.filter(searched), pattern))


def _with_python_rows(array, result, which: int, function, plain=None):
    """`result`, with the rows of `array` holding a character not verified safe computed by `function`
    (exactly as Python does); the characters of those rows are verified for the next call. Rows that
    `plain` marks hold none such."""
    import pyarrow as pa
    import pyarrow.compute as pc

    _seeded()
    mask = matching(array, _safe_class(which), plain)
    if not pc.any(mask).as_py():
        return result
    known = len(_VERDICTS)
    _verdicts(sorted(set("".join(array.filter(mask).to_pylist())), key=ord))  # it skips those already verified
    if len(_VERDICTS) > known:  # newly verified characters may clear most of those rows
        mask = matching(array, _safe_class(which), plain)
        if not pc.any(mask).as_py():
            return result
    redone = [function(text) for text in array.filter(mask).to_pylist()]
    return pc.replace_with_mask(result, mask, pa.array(redone, result.type))


def _one_chunk(array):
    import pyarrow as pa

    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def _replaced(text, pattern: str, replacement: str):
    """Regex replacement, run only on the rows that match (most rows have nothing to replace)."""
    import pyarrow.compute as pc

    mask = matching(text, pattern)
    if not pc.any(mask).as_py():
        return text
    return pc.replace_with_mask(text, mask, pc.replace_substring_regex(text.filter(mask), pattern, replacement))


def _noise_removed(text):
    """Zero-width characters, `_x000D_` markers and CR gone from an Arrow string array (`_without_noise`)."""
    import pyarrow.compute as pc

    text = _replaced(text, _patterns()["zero_width"], "")
    while pc.any(matching(text, "(?i)_x000D_")).as_py():
        text = _replaced(text, "(?i)_x000D_", "")
    return _replaced(text, "\r\n?", "\n")


def _normalized_after_nfkc(text):
    text = _replaced(_noise_removed(text), _patterns()["horizontal_space"], " ")
    text = _replaced(text, " ?\n ?", "\n")
    return _replaced(text, "\n{3,}", "\n\n")


def _cleaned_before_trim(text):
    """`clean_text`'s steps but the trailing trim, over an Arrow string array."""
    import pyarrow.compute as pc

    text = pc.utf8_rtrim(_noise_removed(text), characters=_WHITESPACE)
    return _replaced(text, _patterns()["leading_blank_lines"], "")


def clean_arrow(array, plain=None):
    """`clean_text` of each string of an Arrow string array (nulls stay null); rows holding a
    zero-width joiner (kept or not by its neighbours) are cleaned by `clean_text` itself. `plain`:
    the array's `plain_rows`, when known."""
    import pyarrow as pa
    import pyarrow.compute as pc

    patterns = _patterns()
    array = _one_chunk(array)
    # Most rows hold no noise: one pass finds those that do, and only they go through the steps.
    mask = matching(array, patterns["needs_cleaning"], plain)
    text = array
    if pc.any(mask).as_py():
        text = pc.replace_with_mask(array, mask, _cleaned_before_trim(array.filter(mask)))
    text = pc.utf8_rtrim(text, characters=_WHITESPACE)
    joiner = matching(array, "\u200d", plain)
    if pc.any(joiner).as_py():
        redone = [clean_text(value) for value in array.filter(joiner).to_pylist()]
        text = pc.replace_with_mask(text, joiner, pa.array(redone, text.type))
    return text


def normalize_arrow(array, plain=None):
    """`normalize_text` of each string of an Arrow string array (nulls stay null). `plain`: the array's
    `plain_rows`, when known."""
    import pyarrow.compute as pc

    patterns = _patterns()
    array = _one_chunk(array)
    text = pc.utf8_normalize(array, form="NFKC")
    # Only rows with a zero-width character, a marker, or whitespace other than single spaces change
    # beyond NFKC and trimming; the steps run on those alone.
    mask = matching(text, patterns["needs_steps"])
    if pc.any(mask).as_py():
        text = pc.replace_with_mask(text, mask, _normalized_after_nfkc(text.filter(mask)))
    text = pc.utf8_trim(text, characters=_WHITESPACE)
    return _with_python_rows(array, text, 0, normalize_text, plain)


def match_keys_arrow(array, plain=None):
    """`match_key` of each string of an Arrow array of already normalised strings (nulls stay null).
    `plain`: the `plain_rows` of the texts they were normalised from, when known."""
    import pyarrow.compute as pc

    array = _one_chunk(array)
    keys = _replaced(pc.utf8_lower(array), _patterns()["all_space"], "")
    return _with_python_rows(array, keys, 1, lambda text: _ALL_SPACE.sub("", text.casefold()), plain)
