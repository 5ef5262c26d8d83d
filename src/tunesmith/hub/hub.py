"""Cards and the Hub: model and dataset cards (huggingface_hub's ModelCard / DatasetCard), the staged
folder a push uploads, its upload plan, and the push itself (opt-in, `results/pushed/...` targets).

A staged folder is what a hub repository will hold, built next to the artifacts and never inside
them: the artifact's files hard-linked (or copied), the card as README.md, and for an adapter an
adapter_config.json that names the base model by its hub id and fetched commit instead of the local
snapshot folder it was trained from. An adapter chain (continued pretraining, SFT, DPO on the merged
SFT model) is staged as one subfolder per adapter, in merge order, which the card's code loads.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import yaml

from tunesmith.jobs.atomic import atomic_path, content_hash, write_json

CARD = "README.md"
# The recipe sections a model card shows, in this order, when the run has them.
MODEL_SECTIONS = ("base_model", "template", "continued_pretraining", "sft", "dpo", "distributed", "generate")


class HubError(RuntimeError):
    """A push that cannot be made; the message says which recipe key or login to fix."""


# ---- cards ---------------------------------------------------------------------------------------

def _yaml_block(data) -> list[str]:
    return ["```yaml", yaml.safe_dump(data, allow_unicode=True, sort_keys=False).rstrip(), "```", ""]


def _counts_table(cards: dict[str, dict]) -> list[str]:
    """Per role and source: records in, kept, train and validation rows, quarantined (the data cards)."""
    lines = ["| data | source | records in | kept | train rows | validation rows | quarantined |",
             "|---|---|--:|--:|--:|--:|--:|"]
    for role, card in cards.items():
        for source, entry in card["sources"].items():
            lines.append(f"| {role} | {source} | {entry['rows_in']} | {entry['kept']} | {entry['written']['train']} | "
                         f"{entry['written']['validation']} | {sum(entry['quarantined'].values())} |")
    reasons = {f"{role}: {reason}": count for role, card in cards.items()
               for reason, count in card["totals"]["quarantined"].items()}
    return lines + ["", "Quarantined, by reason: " + (", ".join(f"{name} {count}" for name, count in reasons.items())
                                                     or "none"), ""]


def _scores_table(scores: dict | None) -> list[str]:
    if not scores:
        return ["No reference answers were given, so no scores were computed.", ""]
    lines = ["| stage | exact match | chrF | tasks |", "|---|--:|--:|--:|"]
    lines += [f"| {stage} | {result['exact_match']:.1%} | {result['chrf']:.1f} | {result['n']} |"
              for stage, result in scores["stages"].items()]
    return lines + [""]


def base_model_id(record: dict | None) -> tuple[str | None, str | None]:
    """(hub id, commit) of the base model when it came from the hub, else (None, None)."""
    if record and record.get("source") == "hub":
        return record["repo_id"], record["commit"]
    return None, None


NO_PUBLISH = {"license": None, "model_repo": None, "dataset_repo": None}


def model_card(kind: str, stage: str, sections: dict, adapters: list[str], data_cards: dict[str, dict] | None,
               scores: dict | None, record: dict | None, publish: dict = NO_PUBLISH, chain: list[dict] = ()) -> str:
    """The one model card: of an adapter chain (`kind` adapter) or a merged export (`kind` export) of
    `stage`: hub metadata, how to load it, the adapters merged in (`chain`, from the adapter metadata), the
    template, the recipe sections, data counts and scores. An export's own folder gets it as soon as it is
    merged (`data_cards` None: no data or scores section); the staged folder of a push gets the full card."""
    from huggingface_hub import ModelCard, ModelCardData

    base_repo, commit = base_model_id(record)
    names = [Path(adapter).parent.parent.name for adapter in adapters]  # results/<stage>/<key>/adapter
    tags = ["tunesmith", "trl", stage, *(["lora", "peft"] if kind == "adapter" else [])]
    data = ModelCardData(base_model=base_repo, library_name="peft" if kind == "adapter" else "transformers",
                         license=publish["license"], tags=tags, pipeline_tag="text-generation",
                         datasets=[publish["dataset_repo"]] if publish["dataset_repo"] else None)
    repo = publish["model_repo"] or "OWNER/NAME"
    base_text = (f"[{base_repo}](https://huggingface.co/{base_repo}) at commit `{commit}`" if base_repo
                 else f"a local base model (`{sections['base_model']['path'] or 'the tiny model tunesmith builds'}`), "
                      "not on the hub: load it from where it was trained")
    body = [f"# {repo.split('/')[-1]}", "",
            f"{'LoRA adapters' if kind == 'adapter' else 'A merged model'} of the **{stage}** stage, trained by "
            f"tunesmith from {base_text}.", ""]
    if chain:
        order = " → ".join(f"{step['stage']} (LoRA r={step['r']})" for step in chain)
        body += ["Adapters, in training order: " + order
                 + ("; merged into the base (on the CPU, without quantisation)." if kind == "export" else "."), ""]
    body += ["## Use", ""]
    if kind == "export":
        body += ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
                 f'model = AutoModelForCausalLM.from_pretrained("{repo}")',
                 f'tokenizer = AutoTokenizer.from_pretrained("{repo}")', "```", ""]
    else:
        body += ["```python", "from peft import PeftModel", "from transformers import AutoModelForCausalLM, AutoTokenizer",
                 f'model = AutoModelForCausalLM.from_pretrained("{base_repo or "BASE_MODEL"}"'
                 + (f', revision="{commit}")' if commit else ")"),
                 f'tokenizer = AutoTokenizer.from_pretrained("{base_repo or "BASE_MODEL"}"'
                 + (f', revision="{commit}")' if commit else ")")]
        if len(adapters) == 1:
            body += [f'model = PeftModel.from_pretrained(model, "{repo}")', "```", ""]
        else:
            body += [f"# the adapters are merged in this order, as in training: {', '.join(names)}",
                     f"for name in {names!r}:",
                     f'    model = PeftModel.from_pretrained(model, "{repo}", subfolder=name).merge_and_unload()',
                     "```", ""]
    template = sections["template"]
    body += ["Prompts must be rendered exactly as in training: template "
             f"`{template['kind']}`" + (":" if template["kind"] == "plain" else " (the tokenizer's chat template)."), ""]
    if template["kind"] == "plain":
        body += ["```", template["prompt"].rstrip("\n"), "```", ""]
    if data_cards is not None:
        body += ["## Scores on the task file", "", *_scores_table(scores)]
        body += ["## Training data", "", *_counts_table(data_cards)]
    body += ["## Recipe", "", "The recipe sections that made this model (every default filled in):", ""]
    shown = [name for name in MODEL_SECTIONS if name in sections
             if name != "continued_pretraining" or sections[name]["enabled"]
             if name != "dpo" or stage == "dpo"]
    body += _yaml_block({name: sections[name] for name in shown})
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)))


def dataset_card(role: str, data_card: dict, sources: list[dict], curate: dict, configs: list[dict],
                 license: str | None = None) -> str:
    """The dataset card of a curated dataset: hub metadata (its layouts and splits as `configs`), how
    to load it, the counts per source and reason, and the curation settings."""
    from huggingface_hub import DatasetCard, DatasetCardData

    totals = data_card["totals"]
    data = DatasetCardData(license=license, task_categories=["text-generation"], configs=configs,
                           tags=["tunesmith", "sft" if role == "sft" else "dpo"],
                           size_categories=_size_category(totals["kept"]))
    body = [f"# Curated {role} data", "",
            f"{totals['rows_in']} records in, {totals['kept']} kept ({totals['written']['train']} train rows, "
            f"{totals['written']['validation']} validation rows), {sum(totals['quarantined'].values())} quarantined "
            "by tunesmith's curation (DuckDB). Each layout below holds the same rows; `id` and `source` trace "
            "each row to the data card and its raw file. The text is the curated text, before any prompt template.",
            "", "## Load", "", "```python", "from datasets import load_dataset",
            *(f'load_dataset("REPO_OR_FOLDER", "{config["config_name"]}")  # train and validation splits'
              for config in configs), "```", "", "## Counts", "", *_counts_table({role: data_card}),
            "## Curation settings", "", *_yaml_block({"sources": sources, "curate": curate})]
    return str(DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)))


def _size_category(rows: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < limit:
            return name
    return "1M<n<10M"


# ---- staging ---------------------------------------------------------------------------------------

def _files(folder: Path) -> list[Path]:
    return sorted(file for file in folder.rglob("*") if file.is_file() and file.name != CARD
                  and not any(part.startswith(".") for part in file.relative_to(folder).parts))


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source.resolve(), target)
    except OSError:
        shutil.copyfile(source, target)


def stage_folder(parts: list[tuple[str, str]], out_dir: str, card_text: str, base_repo: str | None = None,
                 base_commit: str | None = None) -> list[str]:
    """Stage a hub repository's files: each (subfolder, source folder) of `parts` ("" for the root),
    the card as README.md; an adapter_config.json is rewritten (never edited through a link) to name
    `base_repo` at `base_commit`. Returns the staged paths."""
    with atomic_path(out_dir, directory=True) as tmp:
        for prefix, folder in parts:
            for file in _files(Path(folder)):
                target = Path(tmp) / prefix / file.relative_to(folder)
                if file.name == "adapter_config.json" and base_repo:
                    config = json.loads(file.read_text(encoding="utf-8"))
                    config.update(base_model_name_or_path=base_repo, revision=base_commit)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
                else:
                    _link_or_copy(file, target)
        (Path(tmp) / CARD).write_text(card_text, encoding="utf-8")
        staged = [str(path.relative_to(tmp)) for path in sorted(Path(tmp).rglob("*")) if path.is_file()]
    return staged


def adapter_parts(adapters: list[str], names: list[str]) -> list[tuple[str, str]]:
    """One adapter at the repository's root; a chain as one subfolder per adapter, named by its stage."""
    return [("", adapters[0])] if len(adapters) == 1 else list(zip(names, adapters))


def _read_json(path: str | None) -> dict | None:
    return json.loads(Path(path).read_text(encoding="utf-8")) if path else None


def stage_model(kind: str, stage: str, sources: list[str], sections: dict, data_cards: dict[str, str],
                scores_path: str | None, record_path: str | None, publish: dict, out_dir: str) -> list[str]:
    """Stage an adapter chain (`kind` adapter: `sources` are the adapters in merge order) or a merged
    export (`kind` export: `sources` is its folder) of `stage` with its model card."""
    record = _read_json(record_path)
    base_repo, commit = base_model_id(record)
    from tunesmith.model.adapters import METADATA_FILE  # torch: only in the job, not where the workflow imports hub

    adapters = sources if kind == "adapter" else []
    metadata = Path(sources[-1], METADATA_FILE)
    chain = json.loads(metadata.read_text(encoding="utf-8")).get("chain", []) if metadata.is_file() else []
    card = model_card(kind, stage, sections, adapters, {role: _read_json(path) for role, path in data_cards.items()},
                      _read_json(scores_path), record, publish, chain)
    names = [Path(adapter).parent.parent.name for adapter in adapters]
    parts = adapter_parts(adapters, names) if kind == "adapter" else [("", sources[0])]
    return stage_folder(parts, out_dir, card, base_repo=base_repo if kind == "adapter" else None, base_commit=commit)


def export_curated(kept_path: str, data_card_path: str, role: str, sources: list[dict], curate: dict,
                   out_dir: str) -> dict:
    """`export_dataset` of a curated dataset, with its dataset card (no license: that is publish's)."""
    from tunesmith.data.export_data import configs, export_dataset  # pyarrow: kept out of the workflow's start

    card = dataset_card(role, _read_json(data_card_path), sources, curate, configs(role))
    return export_dataset(kept_path, role, out_dir, card)


def stage_dataset(dataset_dir: str, data_card_path: str, role: str, sources: list[dict], curate: dict,
                  publish: dict, out_dir: str) -> list[str]:
    """Stage an exported curated dataset with its card, carrying publish.license."""
    from tunesmith.data.export_data import configs  # as in export_curated

    card = dataset_card(role, _read_json(data_card_path), sources, curate, configs(role), license=publish["license"])
    return stage_folder([("", dataset_dir)], out_dir, card)


# ---- push --------------------------------------------------------------------------------------------

def upload_plan(folder: str | os.PathLike, repo_id: str | None, repo_type: str, private: bool, what: str) -> dict:
    """What a push sends: the repository, and every file with its size and sha256."""
    if not repo_id:
        key = "publish.dataset_repo" if repo_type == "dataset" else "publish.model_repo"
        raise HubError(f"{key} is null: name the hub repository (owner/name) to push {what} to")
    folder = Path(folder)
    # Hidden entries are bookkeeping (Snakemake's .snakemake_timestamp in a directory output), not content.
    files = [{"path": str(file.relative_to(folder)), "size": file.stat().st_size, "sha256": content_hash(file)}
             for file in sorted(folder.rglob("*")) if file.is_file()
             and not any(part.startswith(".") for part in file.relative_to(folder).parts)]
    if not any(entry["path"] == CARD for entry in files):
        raise HubError(f"{folder}: no {CARD}; a push always carries its card")
    return {"repo_id": repo_id, "repo_type": repo_type, "private": private, "commit_message": f"tunesmith: {what}",
            "files": files, "bytes": sum(entry["size"] for entry in files)}


def push_folder(folder: str | os.PathLike, plan: dict, receipt_path: str | os.PathLike) -> dict:
    """Create the repository if needed and upload the planned files of `folder` as one commit; write the
    receipt (the plan, the commit's URL and id, the time) to `receipt_path`."""
    from huggingface_hub import CommitOperationAdd, HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
    from huggingface_hub.utils import LocalTokenNotFoundError

    if constants.HF_HUB_OFFLINE:
        raise HubError("HF_HUB_OFFLINE is set: a push needs the network; unset it for this command")
    api = HfApi()
    try:
        api.create_repo(plan["repo_id"], repo_type=plan["repo_type"], private=plan["private"], exist_ok=True)
        # Exactly the planned files, as one commit.
        operations = [CommitOperationAdd(path_in_repo=entry["path"], path_or_fileobj=str(Path(folder) / entry["path"]))
                      for entry in plan["files"]]
        commit = api.create_commit(repo_id=plan["repo_id"], repo_type=plan["repo_type"], operations=operations,
                                   commit_message=plan["commit_message"])
    except LocalTokenNotFoundError:
        raise HubError("no hub token: log in with `hf auth login` or set HF_TOKEN") from None
    except (HfHubHTTPError, OfflineModeIsEnabled) as error:
        raise HubError(f"pushing to {plan['repo_type']} {plan['repo_id']} failed: {error}") from None
    receipt = {**plan, "commit_url": commit.commit_url, "commit_oid": commit.oid,
               "pushed": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write_json(receipt_path, receipt)
    return receipt


def push(folder: str, repo_id: str | None, repo_type: str, private: bool, what: str, receipt_path: str) -> dict:
    """Plan, then push, a staged folder (the `results/pushed/...` targets)."""
    return push_folder(folder, upload_plan(folder, repo_id, repo_type, private, what), receipt_path)
