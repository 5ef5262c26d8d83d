"""How a job runs and what it leaves behind: atomic writes, its log, progress lines, the recipe
keys it read and its manifest (lineage). The lowest layer: every other subpackage may use it.

Modules: atomic, logs, progress, reads, manifest."""
