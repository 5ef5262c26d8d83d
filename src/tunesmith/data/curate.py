"""Curation: one role's ingested sources → kept rows, quarantined rows and a data card, atomically.

`tunesmith.data.ingest.ingest_source` reads each source into a Parquet file of raw records with exact file
and line; `tunesmith.data.curate_pipeline` decides every row's outcome in DuckDB SQL; this module runs it,
writes the two Parquet files (every input record ends up in exactly one of them; a kept record of
weight > 1 may be written several times), reconciles the counts per source from the written files,
refuses a result that keeps nothing or too little of a source, and writes the card
(`tunesmith.data.card`).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from tunesmith.config.schema import with_defaults
from tunesmith.data.card import card_data, lengths, summary
from tunesmith.data.curate_checks import SHAPES, sql_string
from tunesmith.data.curate_pipeline import REASONS, SPLITS, CurationError, classify
from tunesmith.data.ingest import ingest_source, ingested_source
from tunesmith.data.sources import IngestError, Source, check_settings, resolve_sources, source_with_defaults
from tunesmith.data.tasks import read_tasks
from tunesmith.jobs.atomic import PARTIAL, atomic_path, write_json
from tunesmith.jobs.progress import duration

log = logging.getLogger(__name__)

__all__ = ["REASONS", "CurationError", "curate", "curate_memory_limit"]

def _resolved(sources: list[dict], role: str, list_files: bool) -> list[Source]:
    if role not in SHAPES:
        raise CurationError(f"role must be one of {sorted(SHAPES)}, got {role!r}")
    try:
        return resolve_sources(sources, role, list_files)
    except IngestError as error:
        raise CurationError(str(error)) from None


def _matched_ingests(chosen: list[Source], ingested: list[str]) -> tuple[list[str], dict[str, dict]]:
    """The ingested file of each source, in source order, checked against the recipe entry."""
    by_id = {}
    for path in ingested:
        try:
            described = ingested_source(path)
        except (IngestError, OSError) as error:
            raise CurationError(f"{path}: cannot read the ingested source: {error}") from None
        by_id[described["id"]] = (path, described)
    paths, described = [], {}
    for source in chosen:
        if source.id not in by_id:
            raise CurationError(f"{source.where}: no ingested file among {sorted(ingested)}")
        path, entry = by_id[source.id]
        read_as = {key: entry[key] for key in ("path", "format", "split")}
        if read_as != {"path": source.path, "format": source.format, "split": source.split}:
            raise CurationError(f"{source.where}: {path} was ingested from {read_as}; ingest the source again")
        paths.append(path)
        described[source.id] = entry
    return paths, described


def _reconciled_counts(con, chosen: list[Source], described: dict, kept: Path, quarantined: Path) -> dict:
    """Per-source counts read back from the written files; raise if any record went missing or doubled."""
    rows_in = dict(con.execute("SELECT source, count(*) FROM records GROUP BY source").fetchall())
    found = {source.id: Counter() for source in chosen}
    written = {source.id: Counter() for source in chosen}
    for source, outcome, n in con.execute(
            f"SELECT source, 'kept', count(DISTINCT (file, line)) FROM read_parquet({sql_string(str(kept))}) GROUP BY ALL "
            f"UNION ALL SELECT source, reason, count(*) FROM read_parquet({sql_string(str(quarantined))}) GROUP BY ALL"
    ).fetchall():
        found[source][outcome] += n
    for source, split, n in con.execute(
            f"SELECT source, split, count(*) FROM read_parquet({sql_string(str(kept))}) GROUP BY ALL").fetchall():
        written[source][split] += n
    counts = {}
    for source in chosen:
        outcomes, n_in = found[source.id], rows_in.get(source.id, 0)
        counts[source.id] = {"path": source.path, "format": source.format, "style": source.style,
                             "files": len(described[source.id]["files"]), "weight": source.weight,
                             "max_rows": source.max_rows, "rows_in": n_in, "kept": outcomes.pop("kept", 0),
                             "written": {split: written[source.id][split] for split in SPLITS},
                             "quarantined": {reason: outcomes[reason] for reason in REASONS if outcomes[reason]}}
        if n_in != counts[source.id]["kept"] + outcomes.total():
            raise CurationError(f"{source.where}: {n_in} rows in, but "
                                f"{counts[source.id]['kept']} kept + {outcomes.total()} quarantined")
    return counts


@contextmanager
def _output_folder(folder: Path):
    """The outputs' folder, made for the run; a curation that fails leaves no folder it made (and so
    nothing at all: a bad mapping fails before any row is written)."""
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except BaseException:
        if made:
            with suppress(OSError):
                folder.rmdir()  # only when empty
        raise


def duckdb_memory_limit(limit: str) -> str:
    """DuckDB's memory limit for `curate.memory_limit`: a size as written ("4GB"), or a share ("40%")
    of the memory available now (MemAvailable; at least 256 MB), since the machine is often shared."""
    if not limit.endswith("%"):
        return limit.replace(" ", "")
    share = float(limit[:-1]) / 100
    if not 0 < share <= 1:
        raise CurationError(f"curate.memory_limit: a share must lie in (0%, 100%], got {limit!r}")
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            available_kib = next(int(line.split()[1]) for line in handle if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):  # not Linux: DuckDB's share of the physical memory
        return limit.replace(" ", "")
    return f"{max(256, int(available_kib * share / 1024))}MB"


@contextmanager
def _too_small(memory_limit: str, limit: str):
    """DuckDB running out of memory (what it cannot spill) as an error that names the recipe key."""
    try:
        yield
    except duckdb.OutOfMemoryException as error:
        raise CurationError(f"curate.memory_limit {memory_limit!r} ({limit}) is too small for this curation; "
                            f"raise it (DuckDB: {str(error).splitlines()[0]})") from None


def curate_memory_limit(job) -> str:
    """curate.memory_limit for a Snakemake curation job: from the workflow's config, not params (the stage
    table declares it unkeyed: a different limit writes the same rows, so it must rerun nothing)."""
    from tunesmith.config import plan  # plan imports what imports this module

    recipe = dict(job.config)
    return plan.pick(recipe, plan.STAGES["curate"].unkeyed(recipe, job.wildcards.role))["curate"]["memory_limit"]


def _local_tokenizer(path: str | None, trust_remote_code: bool):
    """(the tokenizer at `path` loaded without the network, or None; why not, or None)."""
    if path is None:
        return None, None
    try:
        from transformers import AutoTokenizer  # slow to import; only recipes that count tokens need it

        return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code), None
    except Exception as error:  # transformers raises many kinds; each means "not here"
        return None, f"the tokenizer {path} is not available locally ({type(error).__name__}), so tokens are estimated"


ROW_GROUP_ROWS = 122_880  # DuckDB's default; the files' layout is part of what curation promises
LABELS = ("source", "file", "split", "reason")  # the written columns worth a Parquet dictionary
# Written without compression: hex digests do not compress (snappy saves 3.5% of the bench corpus's ids, and took
# a quarter of the time of writing its kept file).
INCOMPRESSIBLE = ("id",)
MIXING = ("downsampled", "over_cap")  # the recipe's choice, not a loss
TOP_REASONS = 3


# The kept rows in recipe order: one scan of `keyed` (written in pos order; a scan keeps it) filtered by bitstrings
# over pos of the kept rows and of those that validate: joined with `classified`, the rows and their texts would be
# sorted (once curation's memory peak). A train row of a source of weight above 1 is written `copies` times in a row
# in the same scan (sorted instead: 84.7 s at 10M rows under 2 GB for weight 1.5, 64.5 s now; bench/README.md).
KEPT_SQL = """SELECT id, source, file, line, {columns}, split FROM (SELECT *,
  CASE WHEN get_bit(getvariable('validation_rows'), (pos - {first})::INTEGER) = 1 THEN 'validation' ELSE 'train' END
  AS split{copies} FROM keyed WHERE get_bit(getvariable('kept_rows'), (pos - {first})::INTEGER) = 1)"""
COPIES_SQL = """, CASE source_rank {weights} END AS w, unnest(range(CASE WHEN split = 'validation' OR w <= 1 THEN 1
  ELSE floor(w)::INTEGER + (uniform(id, {seed}, 'mix') < w - floor(w))::INTEGER END)) AS copy"""
ROWS_SQL = "SET VARIABLE {name} = (SELECT bitstring_agg(pos, {first}, {last}) FROM classified WHERE outcome IS NULL{rows})"


def kept_sql(con, columns: str, chosen: list[Source], seed: int) -> str:
    """The query of the kept rows' file (KEPT_SQL, whose variables it sets on `con`)."""
    first, last = con.execute("SELECT coalesce(min(pos), 0), coalesce(max(pos), 0) FROM classified").fetchall()[0]
    for name, rows in (("kept_rows", ""), ("validation_rows", " AND split = 'validation'")):
        con.execute(ROWS_SQL.format(name=name, first=first, last=last, rows=rows))
    copies = ""
    if any(source.weight > 1 for source in chosen):  # by a CASE on the rank: a join could reorder the scan
        weights = " ".join(f"WHEN {source.rank} THEN {float(source.weight)!r}::DOUBLE" for source in chosen)
        copies = COPIES_SQL.format(weights=weights, seed=int(seed))
    return KEPT_SQL.format(columns=columns, first=first, copies=copies)


QUARANTINE_SQL = """SELECT c.source, c.file, c.line, c.outcome.reason AS reason, c.outcome.detail AS detail, r.raw
FROM classified c JOIN records r USING (pos) WHERE c.outcome IS NOT NULL ORDER BY pos"""


def _write_rows(con, query: str, path) -> None:
    """The rows of `query`, in its order, to a Parquet file in row groups of exactly ROW_GROUP_ROWS rows, held
    a row group at a time. The bytes depend on the rows alone, not on how DuckDB hands them over (its own
    COPY cuts row groups where its scan's batches end; Arrow's writer cuts pages where a chunk ends, so
    each row group is written as one chunk)."""
    reader = con.sql(query).to_arrow_reader(ROW_GROUP_ROWS)
    labels = [name for name in reader.schema.names if name in LABELS]
    # A row group is joined, encoded and compressed on a second thread while DuckDB hands over the next
    # (both let the GIL go): the bench corpus's kept file in 0.53-0.75 s instead of 0.73-0.79. One row group
    # in writing at a time; leaving the pool waits for it, before the writer closes.
    codecs = {name: "none" if name in INCOMPRESSIBLE else "snappy" for name in reader.schema.names}
    with pq.ParquetWriter(path, reader.schema, use_dictionary=labels, compression=codecs) as writer, \
            ThreadPoolExecutor(1, thread_name_prefix="curate-write") as pool:
        rest, writing = reader.schema.empty_table(), []

        def write(table: pa.Table) -> None:
            if writing:
                writing.pop().result()
            writing.append(pool.submit(lambda: writer.write_table(table.combine_chunks(), ROW_GROUP_ROWS)))

        for batch in reader:
            rest = pa.concat_tables([rest, pa.Table.from_batches([batch])])
            while rest.num_rows >= ROW_GROUP_ROWS:
                write(rest.slice(0, ROW_GROUP_ROWS))
                rest = rest.slice(ROW_GROUP_ROWS)
        if rest.num_rows:
            write(rest)
        if writing:
            writing.pop().result()


def _check_kept(con, role: str, chosen: list[Source], counts: dict, min_share: float, several_files: list) -> None:
    """Fail when the role keeps nothing, or a source passes curation's checks for under `min_share`
    of its records (mixing aside): a mapping or convention mistake, not dirt. Names each source at
    fault with its top quarantine reasons and an example of each."""
    empty = sum(entry["kept"] for entry in counts.values()) == 0
    problems = []
    for source in chosen:
        entry = counts[source.id]
        passed = entry["kept"] + sum(entry["quarantined"].get(reason, 0) for reason in MIXING)
        share = passed / entry["rows_in"] if entry["rows_in"] else 0
        if not empty and (not entry["rows_in"] or share >= min_share):
            continue
        reasons = sorted(((n, reason) for reason, n in entry["quarantined"].items() if reason not in MIXING),
                         key=lambda item: (-item[0], REASONS.index(item[1])))[:TOP_REASONS]
        described = []
        for n, reason in reasons:
            file, line, detail = con.execute(
                "SELECT file, line, outcome.detail FROM classified WHERE source = $source AND outcome.reason = $reason "
                "ORDER BY pos LIMIT 1", {"source": source.id, "reason": reason}).fetchall()[0]
            where = f"{file}:{line}" if source.rank in several_files else f"line {line}"
            described.append(f"{reason} {n} (e.g. {where}" + (f": {detail})" if detail else ")"))
        below = "" if empty else f" ({round(share, 2)}, below curate.min_kept_share {min_share})"
        problems.append(f"{source.where}: kept {entry['kept']} of {entry['rows_in']} records{below}"
                        + ("; top quarantine reasons: " + ", ".join(described) if described else ""))
    if problems:
        headline = (f"curation of role '{role}' keeps no rows" if empty
                    else f"curation of role '{role}': a source keeps too little")
        raise CurationError(headline + ":\n  " + "\n  ".join(problems))


def curate(sources: list[dict], role: str, tasks_path: str, settings: dict, kept_path: str, quarantine_path: str,
           card_path: str, *, ingested: list[str] | None = None, seed: int = 0,
           card_markdown_path: str | None = None, lengths_plot_path: str | None = None, threads: int = 1,
           memory_limit: str | None = None, max_length: int | None = None, tokenizer: str | None = None,
           trust_remote_code: bool = False) -> dict:
    """Curate the sources of one role; write kept rows, quarantined rows and a card. Returns the card.

    `ingested`: the Parquet files `tunesmith.data.ingest.ingest_source` wrote for these sources (the
    workflow's per-source cache); None ingests them here first, into a temporary folder. `seed` is the
    recipe seed (mixing, split, MinHash functions, examples). The Markdown card and the PNG of length
    histograms are written when their paths are given. `threads` only speeds up the SQL: the written
    files are the same for any number. DuckDB keeps to `memory_limit` (curate.memory_limit: "4GB", or a
    share of the memory available when curation starts; None: the schema's default) and spills
    beyond it to a temporary folder beside `kept_path` (`.<name>.spill-<random>.partial`, which `tunesmith.jobs.atomic.remove_stale_partials`
    clears after a kill), so a corpus larger than memory curates; the Python side works in bounded
    batches. The written files are the same under any limit. `tokenizer`: a tokenizer folder or hub id (the
    base model's) that counts tokens for the limits and the card instead of the estimate, when it
    loads without the network (else the estimate, and the card says why). `max_length`: the
    training stage's, marked on the length histograms and counted in the card (rows it will cut)."""
    settings = with_defaults("curate", settings)
    problems = check_settings(settings)
    if problems:
        raise CurationError("\n".join(problems))
    chosen = _resolved(sources, role, list_files=ingested is None)
    if ingested is None:
        with tempfile.TemporaryDirectory(prefix="tunesmith-ingest-") as folder:
            paths = [str(Path(folder) / f"{index}.parquet") for index in range(len(chosen))]
            try:
                for entry, path in zip([s for s in map(source_with_defaults, sources) if s["role"] == role], paths):
                    ingest_source(entry, path, settings["max_line_bytes"])
            except IngestError as error:
                raise CurationError(str(error)) from None
            return curate(sources, role, tasks_path, settings, kept_path, quarantine_path, card_path,
                          ingested=paths, seed=seed, card_markdown_path=card_markdown_path,
                          lengths_plot_path=lengths_plot_path, threads=threads, memory_limit=memory_limit,
                          max_length=max_length, tokenizer=tokenizer, trust_remote_code=trust_remote_code)
    paths, described = _matched_ingests(chosen, ingested)
    tasks = read_tasks(tasks_path) if settings["decontaminate"] else []
    shape = SHAPES[role]
    several_files = [source.rank for source in chosen if len(described[source.id]["files"]) > 1]

    memory_limit = memory_limit or with_defaults("curate", {})["memory_limit"]  # the schema's default
    limit = duckdb_memory_limit(memory_limit)
    # No automatic checkpoint (checkpoint_threshold far beyond any corpus): the database lives in memory and goes
    # with the connection, yet at the default 16 MiB a commit set one off that compressed every table in it: 10-12 s
    # on both cores after the last text batch of a 30M-row corpus (bench/README.md).
    with _output_folder(Path(kept_path).parent), tempfile.TemporaryDirectory(prefix=f".{Path(kept_path).name}.spill-", suffix=PARTIAL,
                                     dir=Path(kept_path).parent) as spill, \
            _too_small(memory_limit, limit), \
            duckdb.connect(config={"threads": threads, "memory_limit": limit, "temp_directory": spill,
                                   "checkpoint_threshold": "1TB"}) as con:
        log.info("curation of %s: DuckDB on %d thread(s), memory limit %s (curate.memory_limit %s), spilling to %s",
                 role, threads, limit, memory_limit, spill)
        counter, why = _local_tokenizer(tokenizer, trust_remote_code)
        started = time.monotonic()  # a big corpus's job says where it is (tunesmith.jobs.progress)
        classify(con, chosen, shape, settings, seed, paths, tasks, several_files, counter)
        log.info("curation of %s: %d sources read, every record classified, %s in; writing the rows",
                 role, len(chosen), duration(time.monotonic() - started))
        with atomic_path(kept_path) as kept, atomic_path(quarantine_path) as quarantined:
            # The two files at once, the quarantine file from a second connection to the database (a DuckDB
            # connection runs one statement at a time): each writer encodes on its own thread while DuckDB hands
            # over the other's rows (at 1M rows 0.77-1.03 s one after the other, 0.63-0.73 s together).
            query = kept_sql(con, shape.kept_columns, chosen, seed)
            with con.cursor() as second, ThreadPoolExecutor(1, thread_name_prefix="curate-quarantine") as side:
                quarantine_written = side.submit(_write_rows, second, QUARANTINE_SQL, quarantined)
                _write_rows(con, query, kept)
                quarantine_written.result()
            counts = _reconciled_counts(con, chosen, described, kept, quarantined)
            _check_kept(con, role, chosen, counts, settings["min_kept_share"], several_files)
            card = card_data(con, role, shape, counts, seed, quarantined)
            measured, dropped = lengths(con, shape), lengths(con, shape, kept=False)
            card["lengths"], card["lengths_dropped"] = (
                {field: {measure: summary(values) for measure, values in measures.items()}
                 for field, measures in found.items()} for found in (measured, dropped))
            card["tokens"] = {"counted_by": "tokenizer" if counter is not None else "estimate",
                              "tokenizer": tokenizer if counter is not None else None, "why": why,
                              "max_length": max_length,
                              "kept_over_max_length": (int((measured["total"]["tokens"] > max_length).sum())
                                                       if max_length else None)}
            write_json(card_path, card)
            log.info("curation of %s: %d records kept, %d quarantined, %s in", role,
                     sum(entry["kept"] for entry in counts.values()),
                     sum(sum(entry["quarantined"].values()) for entry in counts.values()),
                     duration(time.monotonic() - started))
            if card_markdown_path or lengths_plot_path:
                from tunesmith.data.card import plot_lengths, write_markdown

                if lengths_plot_path:
                    plot_lengths(measured, dropped, role, lengths_plot_path, max_length,
                                 "counted" if counter is not None else "estimated")
                if card_markdown_path:
                    write_markdown(card, card_markdown_path,
                                   Path(lengths_plot_path).name if lengths_plot_path else None)
    return card
