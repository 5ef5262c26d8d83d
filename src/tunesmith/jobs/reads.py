"""Which recipe keys a job really read: its params, wrapped so that every key looked up is recorded.

A job's params are the recipe keys its stage declares (tunesmith.config.plan), so reading any other key
fails. The reverse, a declared key the code never reads, is what this records: `recorded`
(tunesmith.jobs.manifest) wraps the params while the job runs and writes the dotted keys that were looked
up into the manifest (`settings_read`); the end-to-end test compares them with the declared ones.

A key counts as read when it is looked up (`section["max_length"]`, `.get`, unpacking with `**`);
hashing or printing a whole section does not count. `unread_schema_keys` turns recorded reads into the
schema's keys that nothing read: a section looked up whole does not count for the keys inside it.
"""

from __future__ import annotations

import re
from contextlib import contextmanager

import yaml


class _Recording(dict):
    """A dict whose lookups are recorded as dotted paths; nested dicts and lists are wrapped too."""

    def __init__(self, data: dict, log: set, prefix: str):
        super().__init__({key: wrap(value, log, f"{prefix}.{key}" if prefix else str(key))
                          for key, value in data.items()})
        self._log, self._prefix = log, prefix

    def _path(self, key) -> str:
        return f"{self._prefix}.{key}" if self._prefix else str(key)

    def __getitem__(self, key):
        value = super().__getitem__(key)
        self._log.add(self._path(key))
        return value

    def get(self, key, default=None):
        if key in self:
            return self[key]
        return default

    def __iter__(self):
        # Defined so that `{**section}` looks every key up through __getitem__ (CPython copies a dict
        # subclass with dict's own iterator without calling __getitem__).
        return super().__iter__()

    def __reduce__(self):
        return dict, (dict(self.items()),)


class _RecordingList(list):
    def __init__(self, items: list, log: set, prefix: str):
        super().__init__(wrap(item, log, f"{prefix}[{index}]") for index, item in enumerate(items))

    def __reduce__(self):
        return list, (list(self),)


def wrap(value, log: set, prefix: str):
    if isinstance(value, dict):
        return _Recording(value, log, prefix)
    if isinstance(value, list) and any(isinstance(item, dict) for item in value):
        return _RecordingList(value, log, prefix)
    return value


# Cards and logs dump sections as YAML; a recorded section dumps as the plain data it holds.
for _dumper in (yaml.SafeDumper, yaml.Dumper):
    _dumper.add_representer(_Recording, yaml.representer.SafeRepresenter.represent_dict)
    _dumper.add_representer(_RecordingList, yaml.representer.SafeRepresenter.represent_list)


class RecordingParams:
    """Stands in for a Snakemake job's `params` while it runs: attribute and item lookups are recorded."""

    def __init__(self, params, log: set):
        self._params, self._log = params, log
        self._wrapped = {name: wrap(value, log, name) for name, value in params.items()}

    def __getattr__(self, name):
        if name.startswith("_") or name not in self._wrapped:
            return getattr(self._params, name)
        self._log.add(name)
        return self._wrapped[name]

    def __getitem__(self, name):
        return self.__getattr__(name)

    def items(self):
        return self._params.items()


def schema_leaves(schema: dict, prefix: str = "") -> set[str]:
    """The schema's keys that hold values, dotted (`sources[].path` for a key of a list's items; a mapping
    without declared keys, such as `sweep.matrix` or `sft.trainer`, is one key)."""
    properties = schema.get("properties")
    if properties:
        return set().union(*(schema_leaves(value, f"{prefix}.{name}" if prefix else name)
                             for name, value in properties.items()))
    items = schema.get("items")
    if schema.get("type") == "array" and isinstance(items, dict) and items.get("properties"):
        return schema_leaves(items, f"{prefix}[]")
    return {prefix}


def unread_schema_keys(schema: dict, read) -> list[str]:
    """The schema's keys (`schema_leaves`) that no recorded read reached: a key is read when a recorded path is
    the key itself or lies inside it (`sweep.matrix.dpo.beta`); a read of its section alone does not count.
    List indexes in `read` are ignored (`sources[2].path` reads `sources[].path`)."""
    generic = {re.sub(r"\[\d+\]", "[]", path) for path in read}
    reached = generic | {path[:end] for path in generic for end in _ends(path)}
    return sorted(key for key in schema_leaves(schema) if key not in reached)


def _ends(path: str):
    """Where each proper prefix of a dotted path ends (`a.b[].c` -> after `a`, `a.b[]`)."""
    for index, character in enumerate(path):
        if character == "." or (character == "[" and path[index:index + 2] == "[]"):
            yield index + (2 if character == "[" else 0)


@contextmanager
def recording_params(job, recording: RecordingParams):
    """`job.params` is `recording` inside the block. Snakemake's script object builds `params` afresh
    on every access (a read-only property), so the object is given a subclass overriding it there."""
    original = type(job)
    if isinstance(getattr(original, "params", None), property):
        job.__class__ = type(original.__name__, (original,), {"params": property(lambda self: recording)})
        try:
            yield
        finally:
            job.__class__ = original
    else:
        params, job.params = job.params, recording
        try:
            yield
        finally:
            job.params = params
