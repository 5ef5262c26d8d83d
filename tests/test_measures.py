"""The vectorised text measures against plain references: RE2 counts per string, and a brute-force
search for the longest tandem repeat."""

import random

import pyarrow as pa
import pyarrow.compute as pc

from tunesmith.data.measures import JAPANESE_RE2, SPACES_RE2, code_points, measure, repetitions, tandem_repeats

ALPHABET = list("あいうアイウー東京日本abcXYZ éß Ωж한\u3000\t\n、。！?0123456789") + ["\U0001F600", "〇", "々"]


def _texts(count: int, seed: int = 3) -> list:
    rng = random.Random(seed)
    texts = ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 30))) for _ in range(count)]
    return texts + [None, "", "Fortranとは？", "AWS ECSとは？", "Tell me about Tokyo."]


def test_measures_equal_their_regular_expression_definitions():
    texts = _texts(3000)
    array = pa.array(texts, pa.string())
    measures, compact, lengths = measure(array)

    def count(pattern):
        return pc.count_substring_regex(array, pattern).to_pylist()

    other = pc.utf8_length(pc.replace_substring_regex(
        array, r"[^\p{L}]|[\p{Latin}\p{Hiragana}\p{Katakana}\p{Han}\x{30FC}]", "")).to_pylist()
    japanese = count(JAPANESE_RE2)
    units = [None if j is None else j + o + w for j, o, w in zip(japanese, other, count(r"\p{Latin}+"))]
    visible = [None if t is None else len(t) - s for t, s in zip(texts, count(SPACES_RE2))]
    assert measures["chars"].to_pylist() == [None if t is None else len(t) for t in texts]
    assert measures["japanese"].to_pylist() == japanese
    assert measures["units"].to_pylist() == units
    assert measures["visible"].to_pylist() == visible
    stripped = pc.replace_substring_regex(array, SPACES_RE2, "")
    points, expected_lengths = code_points(stripped)
    assert compact.tolist() == points.tolist() and lengths.tolist() == [v or 0 for v in visible]


def _brute_force(text: str, max_unit: int, min_copies: int) -> tuple[int, int]:
    best = (0, 0, 0)  # cover, copies, unit
    for unit in range(1, max_unit + 1):
        for start in range(len(text)):
            copies = 1
            while text[start + copies * unit:start + (copies + 1) * unit] == text[start:start + unit] \
                    and start + (copies + 1) * unit <= len(text):
                copies += 1
            if copies >= min_copies and copies * unit > best[0]:
                best = (copies * unit, copies, unit)
    return best[1], best[2]


def test_tandem_repeats_find_the_longest_repeat_like_a_brute_force_search():
    rng = random.Random(7)
    texts = []
    for _ in range(400):
        unit = "".join(rng.choice("あいab") for _ in range(rng.randint(1, 4)))
        texts.append("".join(rng.choice("あいうab") for _ in range(rng.randint(0, 5))) + unit * rng.randint(1, 12)
                     + "".join(rng.choice("えおc") for _ in range(rng.randint(0, 5))))
    points, lengths = code_points(pa.array(texts, pa.string()))
    copies, units = tandem_repeats(points, lengths, 6, 3)
    assert [(int(c), int(u)) for c, u in zip(copies, units)] == [_brute_force(text, 6, 3) for text in texts]


def test_repetition_details_and_the_minimum_length():
    texts = ["はい" * 90, "ありがとう" * 13, "短い" * 3, "ラガー、エール、ラガー、エール、エール、ラガー"]
    points, lengths = code_points(pa.array(texts, pa.string()))
    assert repetitions(points, lengths, min_chars=20, min_copies=8, min_share=0.5, max_unit_chars=30).to_pylist() == [
        "'はい' repeated 90 times in a row, covering 1.0", "'ありがとう' repeated 13 times in a row, covering 1.0",
        None, None]
    assert repetitions(points, lengths, min_chars=2, min_copies=3, min_share=0.5, max_unit_chars=30).to_pylist()[2] \
        == "'短い' repeated 3 times in a row, covering 1.0"


def test_measuring_a_slice_at_a_time_gives_what_measuring_all_at_once_gives(monkeypatch):
    """Curation measures texts SLICE_ROWS at a time (numpy's temporaries stay small); slice edges change
    nothing, repetitions found across them included, nulls and empty texts too."""
    from tunesmith.data import measures as module

    settings = {"min_chars": 20, "min_copies": 8, "min_share": 0.5, "max_unit_chars": 30}
    texts = _texts(200) + ["はい" * 40, None, "", "ok " * 30, "東京" * 12 + "です"] * 3
    array = pa.array(texts, pa.string())
    whole, compact, lengths = measure(array)
    whole["repeated"] = repetitions(compact, lengths, **settings)
    assert sum(detail is not None for detail in whole["repeated"].to_pylist()) >= 6
    for rows in (1, 7, 64, len(texts), 10_000):
        monkeypatch.setattr(module, "SLICE_ROWS", rows)
        sliced = module.measure_slices(array, settings)
        assert {name: column.to_pylist() for name, column in sliced.items()} == \
               {name: column.to_pylist() for name, column in whole.items()}, rows
    assert module.measure_slices(pa.array([], pa.string()), settings)["chars"].to_pylist() == []
    assert "repeated" not in module.measure_slices(array)
