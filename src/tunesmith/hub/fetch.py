"""Snapshots of the models a recipe names, made where the network is, so compute nodes need none.

`fetch_model` (the `fetch_model` rule, a Snakemake localrule) resolves a hub id at a revision with
`huggingface_hub.snapshot_download`, which fills the Hugging Face cache (HF_HUB_CACHE) or, offline
(HF_HUB_OFFLINE=1, or no route to the hub), returns the snapshot already there. The files are then
laid out in the stage's own folder: hard links to the cache's blobs where the file system allows
(no second copy; the cache never rewrites a blob), copies elsewhere. A local folder is not copied:
its files are linked by symbolic link and used in place. Either way the record beside the folder
holds the resolved commit and every file's sha256 and size, and a blob the cache names by its
sha256 (LFS files) is checked against it, so a corrupt download stops here, not in a training job.

Model jobs then load the stage's folder with the hub switched off (`hub_offline`): nothing on a
compute node waits on a network it does not have.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
from pathlib import Path

from tunesmith.jobs.atomic import atomic_path, content_hash, local_files, write_json

log = logging.getLogger(__name__)

COMMIT = re.compile(r"^[0-9a-f]{40}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")


class FetchError(RuntimeError):
    """A model that cannot be snapshotted; the message names the recipe key and what to do."""


def hub_offline() -> None:
    """Switch the Hugging Face hub off for this process and its children (model jobs: every file
    they need is in the fetched snapshot). Set before huggingface_hub is imported, the environment
    variable is enough; if it already is, its module constant is switched too."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def model_problems(path: str, revision: str | None, key: str) -> list[str]:
    """What keeps `path` from being fetched, found before any job (each problem starts with its recipe
    key): a local folder that holds no model (no config.json, or no weights beside it), or, with the
    hub switched off (HF_HUB_OFFLINE), a hub id whose snapshot is not in the Hugging Face cache."""
    folder = Path(path)
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            return [f"{key}.path: the folder {path!r} holds no config.json: it is not a model folder "
                    "(save_pretrained writes config.json beside the weights)"]
        if not any(file.name.endswith(WEIGHT_SUFFIXES) for file in folder.iterdir() if file.is_file()):
            return [f"{key}.path: the folder {path!r} holds no weights (*.safetensors or *.bin)"]
        return []
    if folder.exists():
        return [f"{key}.path: {path!r} is a file; name the model's folder or a hub id"]
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(path)
    except HFValidationError as error:
        return [f"{key}.path: {path!r} is neither a local folder nor a hub id ({_first_sentence(error)})"]
    if constants.HF_HUB_OFFLINE and not isinstance(
            try_to_load_from_cache(path, "config.json", revision=revision), str):
        return [f"{key}.path: {path!r} is neither a local folder nor in the Hugging Face cache "
                f"{constants.HF_HUB_CACHE} at revision {revision or 'main'}, and HF_HUB_OFFLINE is set: run "
                "the fetch where the network is (`snakemake fetch_models --cores 1 --config recipe=...`, "
                "without HF_HUB_OFFLINE), or name a local folder"]
    return []


def _first_sentence(error: Exception) -> str:
    return str(error).strip().split("\n")[0].split(". ")[0][:200]


def _snapshot(repo_id: str, revision: str | None, key: str) -> Path:
    """The cache's snapshot folder of `repo_id` at `revision` (downloaded unless already cached)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (HfHubHTTPError, IncompleteSnapshotError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    try:
        return Path(snapshot_download(repo_id=repo_id, revision=revision))
    except RevisionNotFoundError:
        raise FetchError(f"{key}.revision: {revision!r} is not a branch, tag or commit of {repo_id}") from None
    except RepositoryNotFoundError:
        raise FetchError(f"{key}.path: {repo_id!r} is neither a local folder nor a model on the hub "
                         "(or it is private or gated: log in with `hf auth login` or set HF_TOKEN)") from None
    except (LocalEntryNotFoundError, IncompleteSnapshotError) as error:
        from huggingface_hub import constants

        raise FetchError(
            f"{key}.path: {repo_id!r} at revision {revision or 'main'} is not (completely) in the Hugging Face "
            f"cache {constants.HF_HUB_CACHE}, and the hub cannot be reached"
            f"{' (HF_HUB_OFFLINE is set)' if constants.HF_HUB_OFFLINE else ''}. Run the fetch where the network "
            f"is: `snakemake fetch_models --cores 1 --config recipe=...` on a login node. ({error})") from None
    except HfHubHTTPError as error:
        raise FetchError(f"{key}.path: the hub refused {repo_id!r}: {error}") from None


def _place(source: Path, target: Path, link: str) -> str:
    """Put `source` at `target` by hard link (falling back to a copy) or by symbolic link."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if link == "symlink":
        target.symlink_to(source.resolve())
        return "symlinked"
    try:
        os.link(source.resolve(), target)
        return "linked"
    except OSError:  # another file system, or links not allowed: a real copy
        shutil.copyfile(source, target)
        return "copied"


def _lay_out(files: list[tuple[str, Path]], out_dir: str, link: str) -> tuple[dict, dict]:
    """Place each (relative name, source file) in out_dir atomically; hash what landed there."""
    hashes, placed = {}, {"linked": 0, "copied": 0, "symlinked": 0}
    with atomic_path(out_dir, directory=True) as tmp:
        for name, source in files:
            digest = content_hash(source)
            # The cache names an LFS file's blob by the sha256 the hub gave (its ETag).
            etag = Path(os.readlink(source)).name if link == "hard" and source.is_symlink() else ""
            if SHA256.match(etag) and etag != digest:
                raise FetchError(f"{name}: the cached blob {source.resolve()} holds sha256 {digest}, not the {etag} "
                                 "the hub named; delete it from the cache and fetch again")
            placed[_place(source, Path(tmp) / name, link)] += 1
            hashes[name] = {"sha256": digest, "size": source.stat().st_size}
    return hashes, placed


def fetch_model(path: str, revision: str | None, out_dir: str, record_path: str, key: str = "base_model") -> dict:
    """Snapshot the model `path` (a local folder, or a hub id at `revision`) into `out_dir` and write
    its record (source, resolved commit, per-file sha256 and size) to `record_path`. `key` is the
    recipe section that named the model, for messages. Returns the record."""
    if Path(path).is_dir():  # a local folder
        if revision is not None:
            raise FetchError(f"{key}.revision: {revision!r} is set, but {key}.path {path!r} is a local folder, "
                             "which has no revisions; set it to null")
        folder = Path(path)
        files = [(str(Path(file).relative_to(folder)), Path(file)) for file in local_files(folder)]
        if not files:
            raise FetchError(f"{key}.path: the local folder {path!r} holds no files")
        record = {"source": "local", "path": str(folder.resolve()), "revision": None, "commit": None}
        link = "symlink"
    else:
        snapshot = _snapshot(path, revision, key)
        commit = snapshot.name
        if not COMMIT.match(commit):
            raise FetchError(f"{key}.path: huggingface_hub returned {snapshot}, which is not a snapshot folder")
        if revision is not None and COMMIT.match(revision) and revision != commit:
            raise FetchError(f"{key}.revision: asked for commit {revision}, the cache gave {commit}")
        # The cache's snapshot holds links into blobs/, hidden entries none: every file counts.
        files = sorted((str(file.relative_to(snapshot)), file) for file in snapshot.rglob("*")
                       if file.is_file())
        record = {"source": "hub", "repo_id": path, "revision": revision or "main", "commit": commit}
        link = "hard"
    hashes, placed = _lay_out(files, out_dir, link)
    record.update(files=hashes, placed=placed, bytes=sum(entry["size"] for entry in hashes.values()))
    write_json(record_path, record)
    log.info("%s: %d files, %.1f MB (%s) at commit %s", path, len(hashes), record["bytes"] / 1e6,
             ", ".join(f"{count} {how}" for how, count in placed.items() if count), record["commit"])
    return record
