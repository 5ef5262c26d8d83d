"""The guards of a generated answer: reason codes for an answer that should not be submitted as it is
(empty, too short or long, decode damage, control characters, one character or n-gram or line repeated),
with thresholds from the recipe's `generate.guards`. Digits and numerals never count as the character
that dominates an answer."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter


def repeated_ngram_count(text: str, size: int) -> int:
    """How often the most frequent n-gram of `size` characters occurs, overlaps included. N-grams
    without a letter or digit (a table's |:---:|:---:| rule) do not count."""
    grams = (text[start : start + size] for start in range(len(text) - size + 1))
    counts = Counter(gram for gram in grams if _words(gram))
    return max(counts.values(), default=0)


# A list item's marker: "1.", "2)", "3、", "(4)", "・", "-", "*", "①".
_LIST_MARKER = re.compile(r"^\s*(?:[-*・•]|\(?\d+[.)、:：]?\)?|[\u2460-\u2473])\s*")
_ALLOWED_CONTROLS = "\n\t\r"
MIN_WORD_SHARE = 0.1  # below this share of letters and digits, an answer is punctuation, not text


def _words(text: str) -> list[str]:
    """Letters and digits: what degenerates, unlike the punctuation and rules of lists and tables."""
    return [character for character in text if unicodedata.category(character)[0] in "LN"]


# Kanji written as numerals (一〇〇〇〇〇〇, 一億は一万の一万倍): letters by category, numerals by use.
_KANJI_NUMERALS = frozenset("〇零一二三四五六七八九十百千万億兆京")


def _dominant_character_count(words: list[str]) -> int:
    """How often the most frequent character of `words` occurs, numerals aside: digits (any width,
    superscripts, ①, Ⅳ) and kanji numerals repeat in right answers (1,000,000,000,000円, 2進数の
    11111111) and count only as part of the answer, never as the character that dominates it."""
    counts = Counter(character for character in words
                     if unicodedata.category(character)[0] != "N" and character not in _KANJI_NUMERALS)
    return max(counts.values(), default=0)


def repeated_line_count(text: str) -> int:
    """How often the most frequent line recurs, list markers aside ("1. 東京", "2. 東京"); lines
    without a letter or digit (a table's |---| rule) do not count."""
    lines = [_LIST_MARKER.sub("", line).strip() for line in text.splitlines()]
    return max(Counter(line for line in lines if _words(line)).values(), default=0)


def output_problems(text: str, guards: dict) -> list[str]:
    """Reason codes for an answer that should not be submitted as it is; empty when it passes."""
    text = text.strip()
    if not text:
        return ["empty"]
    problems = []
    if len(text) < guards["min_chars"]:
        problems.append("too_short")
    if len(text) > guards["max_chars"]:
        problems.append("too_long")
    if "\ufffd" in text:  # a byte sequence cut mid-character, decoded
        problems.append("replacement_char")
    if any(unicodedata.category(character) == "Cc" and character not in _ALLOWED_CONTROLS for character in text):
        problems.append("control_char")
    words, visible = _words(text), "".join(text.split())
    max_share = guards["max_char_share"]  # looked up for every answer: a setting, whatever the answers
    if len(words) >= guards["char_share_min_length"]:
        if _dominant_character_count(words) > max_share * len(words):
            problems.append("degenerate_char")
    elif len(visible) >= guards["char_share_min_length"] and len(words) < MIN_WORD_SHARE * len(visible):
        problems.append("degenerate_char")  # punctuation with hardly a word: 」、、、、、、、、、、

    if repeated_ngram_count(text, guards["ngram_size"]) > guards["max_ngram_repeats"]:
        problems.append("repeated_ngram")
    if repeated_line_count(text) > guards["max_line_repeats"]:
        problems.append("repeated_line")
    return problems
