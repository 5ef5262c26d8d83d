import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tunesmith.jobs.atomic import atomic_path, read_jsonl, remove_stale_partials, write_json, write_jsonl


class Boom(Exception):
    pass


def partials(folder):
    return sorted(path.name for path in folder.iterdir() if path.name.endswith(".partial"))


def test_file_appears_on_success_without_leftovers(tmp_path):
    final = tmp_path / "out.txt"
    with atomic_path(final) as tmp:
        assert tmp.parent == final.parent
        assert tmp != final
        assert not final.exists()  # nothing at the final name while writing
        tmp.write_text("done", encoding="utf-8")
    assert final.read_text(encoding="utf-8") == "done"
    assert partials(tmp_path) == []


def test_missing_parent_folders_are_created(tmp_path):
    final = tmp_path / "a" / "b" / "out.txt"
    with atomic_path(final) as tmp:
        tmp.write_text("x", encoding="utf-8")
    assert final.read_text(encoding="utf-8") == "x"


def test_success_replaces_an_existing_file(tmp_path):
    final = tmp_path / "out.txt"
    final.write_text("old", encoding="utf-8")
    with atomic_path(final) as tmp:
        tmp.write_text("new", encoding="utf-8")
    assert final.read_text(encoding="utf-8") == "new"
    assert partials(tmp_path) == []


def test_exception_creates_nothing(tmp_path):
    final = tmp_path / "out.txt"
    with pytest.raises(Boom):
        with atomic_path(final) as tmp:
            tmp.write_text("half", encoding="utf-8")
            raise Boom
    assert list(tmp_path.iterdir()) == []


def test_exception_leaves_an_older_file_untouched(tmp_path):
    final = tmp_path / "out.txt"
    final.write_text("old", encoding="utf-8")
    with pytest.raises(Boom):
        with atomic_path(final) as tmp:
            tmp.write_text("half", encoding="utf-8")
            raise Boom
    assert final.read_text(encoding="utf-8") == "old"
    assert partials(tmp_path) == []


def test_keyboard_interrupt_also_cleans_up(tmp_path):
    final = tmp_path / "out.txt"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(final) as tmp:
            tmp.write_text("half", encoding="utf-8")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_block_that_deletes_its_temp_file_still_reports_its_own_error(tmp_path):
    final = tmp_path / "out.txt"
    with pytest.raises(Boom):
        with atomic_path(final) as tmp:
            tmp.unlink()
            raise Boom
    assert list(tmp_path.iterdir()) == []


def test_directory_appears_on_success_without_leftovers(tmp_path):
    final = tmp_path / "model"
    with atomic_path(final, directory=True) as tmp:
        assert tmp.is_dir()
        (tmp / "weights.bin").write_bytes(b"\x00\x01")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "config.json").write_text("{}", encoding="utf-8")
    assert (final / "weights.bin").read_bytes() == b"\x00\x01"
    assert (final / "sub" / "config.json").read_text(encoding="utf-8") == "{}"
    assert partials(tmp_path) == []


def test_directory_mode_replaces_an_existing_directory(tmp_path):
    final = tmp_path / "model"
    final.mkdir()
    (final / "stale.bin").write_text("old", encoding="utf-8")
    with atomic_path(final, directory=True) as tmp:
        (tmp / "fresh.bin").write_text("new", encoding="utf-8")
    assert sorted(path.name for path in final.iterdir()) == ["fresh.bin"]
    assert partials(tmp_path) == []


def test_directory_exception_creates_nothing(tmp_path):
    final = tmp_path / "model"
    with pytest.raises(Boom):
        with atomic_path(final, directory=True) as tmp:
            (tmp / "half.bin").write_text("half", encoding="utf-8")
            raise Boom
    assert list(tmp_path.iterdir()) == []


def test_directory_exception_leaves_an_older_directory_untouched(tmp_path):
    final = tmp_path / "model"
    final.mkdir()
    (final / "old.bin").write_text("old", encoding="utf-8")
    with pytest.raises(Boom):
        with atomic_path(final, directory=True) as tmp:
            (tmp / "new.bin").write_text("new", encoding="utf-8")
            raise Boom
    assert sorted(path.name for path in final.iterdir()) == ["old.bin"]
    assert (final / "old.bin").read_text(encoding="utf-8") == "old"
    assert partials(tmp_path) == []


def test_two_writers_to_one_folder_get_different_temp_names(tmp_path):
    with atomic_path(tmp_path / "a.txt") as first, atomic_path(tmp_path / "a.txt") as second:
        assert first != second
        first.write_text("1", encoding="utf-8")
        second.write_text("2", encoding="utf-8")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "1"  # the outer block finishes last
    assert partials(tmp_path) == []


ROWS = [
    {"task_id": 0, "input": "日本の首都はどこですか？", "output": "東京です。"},
    {"task_id": 1, "input": "ｶﾀｶﾅ_x000D_\n改行", "output": r"\u3042 はエスケープではない"},
]


def test_write_jsonl_writes_raw_utf8_and_returns_the_count(tmp_path):
    path = tmp_path / "rows.jsonl"
    assert write_jsonl(path, ROWS) == 2
    raw = path.read_bytes()
    assert "日本の首都はどこですか？".encode("utf-8") in raw
    assert b"\\u65e5" not in raw  # 日 not escaped
    lines = raw.decode("utf-8").splitlines()
    assert len(lines) == 2
    assert [json.loads(line) for line in lines] == ROWS
    assert partials(tmp_path) == []


def test_write_jsonl_accepts_a_generator_and_an_empty_iterable(tmp_path):
    assert write_jsonl(tmp_path / "gen.jsonl", (row for row in ROWS)) == 2
    assert read_jsonl(tmp_path / "gen.jsonl") == ROWS
    assert write_jsonl(tmp_path / "empty.jsonl", []) == 0
    assert (tmp_path / "empty.jsonl").read_bytes() == b""


def test_write_jsonl_failing_half_way_leaves_the_older_file(tmp_path):
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, ROWS)
    before = path.read_bytes()

    def rows():
        yield {"task_id": 9}
        raise Boom

    with pytest.raises(Boom):
        write_jsonl(path, rows())
    assert path.read_bytes() == before
    assert partials(tmp_path) == []


def test_write_jsonl_unserialisable_row_creates_nothing(tmp_path):
    with pytest.raises(TypeError):
        write_jsonl(tmp_path / "rows.jsonl", [{"a": 1}, {"b": object()}])
    assert list(tmp_path.iterdir()) == []


def test_write_json_writes_indented_raw_utf8(tmp_path):
    path = tmp_path / "card.json"
    data = {"名前": "データカード", "rows": [1, 2]}
    assert write_json(path, data) is None
    text = path.read_text(encoding="utf-8")
    assert "データカード" in text
    assert "\\u" not in text
    assert "\n  " in text
    assert text.endswith("\n")
    assert json.loads(text) == data
    assert partials(tmp_path) == []


def test_write_json_failure_leaves_the_older_file(tmp_path):
    path = tmp_path / "card.json"
    write_json(path, {"v": 1})
    with pytest.raises(TypeError):
        write_json(path, {"v": object()})
    assert json.loads(path.read_text(encoding="utf-8")) == {"v": 1}
    assert partials(tmp_path) == []


def test_read_jsonl_round_trips_and_skips_blank_lines(tmp_path):
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, ROWS)
    path.write_text(path.read_text(encoding="utf-8") + "\n  \n", encoding="utf-8")
    assert read_jsonl(path) == ROWS


def test_read_jsonl_keeps_line_separator_inside_a_value(tmp_path):
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [{"text": "東京\u2028です\u2029。"}])
    assert read_jsonl(path) == [{"text": "東京\u2028です\u2029。"}]


KILLED_WRITER = """
    import os, signal, sys
    from tunesmith.jobs.atomic import atomic_path, write_jsonl

    final, mode = sys.argv[1], sys.argv[2]
    if mode == "file":
        with atomic_path(final) as tmp:
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write('{"task_id": 0}\\n')
                handle.flush()
                os.fsync(handle.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
    elif mode == "directory":
        with atomic_path(final, directory=True) as tmp:
            (tmp / "part.bin").write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGKILL)
    else:
        def rows():
            yield {"task_id": 0, "input": "途中"}
            yield {"task_id": 1, "input": "まで"}
            os.kill(os.getpid(), signal.SIGKILL)
        write_jsonl(final, rows())
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
@pytest.mark.parametrize("mode, name", [("file", "out.jsonl"), ("directory", "model"), ("jsonl", "rows.jsonl")])
def test_process_killed_mid_write_leaves_nothing_at_the_final_path(tmp_path, mode, name):
    final = tmp_path / "outputs" / name
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILLED_WRITER), str(final), mode],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    assert not final.exists()
    # the kill really happened mid-write: the partial data sits under a hidden temporary name
    assert len(partials(final.parent)) == 1


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
@pytest.mark.parametrize("mode, name", [("file", "out.jsonl"), ("directory", "model"), ("jsonl", "rows.jsonl")])
def test_what_a_killed_writer_left_is_removed_by_the_next_owner(tmp_path, mode, name):
    final = tmp_path / name
    for _ in range(2):  # two killed attempts, two leftovers
        subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED_WRITER), str(final), mode], timeout=60)
    left = partials(tmp_path)
    assert len(left) == 2
    assert sorted(path.name for path in remove_stale_partials(final)) == left
    assert list(tmp_path.iterdir()) == []
    with atomic_path(final, directory=mode == "directory"):
        pass
    assert final.exists() and partials(tmp_path) == []


def test_only_the_outputs_own_partials_are_removed(tmp_path):
    own_file = tmp_path / ".out.jsonl.k2f_9x0a.partial"
    own_folder = tmp_path / ".out.jsonl.a1b2c3d4.partial"
    duckdb_copy = tmp_path / "tmp_.out.jsonl.q7r8s9t0.partial"  # DuckDB's COPY into our temporary, killed
    others = [
        tmp_path / ".out.jsonl.manifest.json.k2f_9x0a.partial",  # another output's temporary
        tmp_path / ".out.jsonl2.k2f_9x0a.partial",
        tmp_path / ".out.jsonl.k2f_9x0a.keep",
        tmp_path / "out.jsonl.k2f_9x0a.partial",
        tmp_path / "tmp_.out.jsonl2.k2f_9x0a.partial",
    ]
    own_file.write_text("half")
    duckdb_copy.write_text("half")
    own_folder.mkdir()
    (own_folder / "weights.bin").write_bytes(b"half")
    for path in others:
        path.write_text("not ours")
    (tmp_path / "out.jsonl").write_text("finished\n")
    assert sorted(remove_stale_partials(tmp_path / "out.jsonl")) == sorted([own_file, own_folder, duckdb_copy])
    assert sorted(tmp_path.iterdir()) == sorted([*others, tmp_path / "out.jsonl"])
    assert (tmp_path / "out.jsonl").read_text() == "finished\n"
    assert remove_stale_partials(tmp_path / "no" / "such" / "folder" / "out.jsonl") == []


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_process_killed_mid_write_leaves_an_older_file_untouched(tmp_path):
    final = tmp_path / "out.jsonl"
    final.write_text('{"old": true}\n', encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILLED_WRITER), str(final), "file"],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    assert read_jsonl(final) == [{"old": True}]


def test_outputs_get_the_umask_mode_not_the_private_temp_mode(tmp_path):
    import stat

    from tunesmith.jobs.atomic import atomic_path, write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "card.json", {})
        with atomic_path(tmp_path / "folder", directory=True):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "card.json").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "folder").st_mode) == 0o755
