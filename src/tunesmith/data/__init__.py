"""Data from source files to curated rows: sources and their formats, ingest, record styles,
text normalisation and measures, curation (DuckDB), near duplicates, data cards, exports in trl's
layouts, KTO's unpaired rows, and the task and reference files the rows are checked against.

Modules: sources, ingest, styles, normalize, measures, curate, curate_checks, curate_pipeline, near_dup, card, export_data, unpaired, tasks."""
