"""On-policy preference pairs: the SFT model answers prompts several times, the answers are graded, and each
prompt's best and worst answer become a preference pair (rejection sampling / iterative DPO, issue 20).

Three jobs, each a stage of the DAG (rules/pairs.smk):
- `sample_answers`: one shard of the prompts (prompt i of the id-sorted sample goes to shard i mod N), each
  prompt's answers drawn with a seed derived from the recipe's seed and the prompt id, as one batch of
  `answers_per_prompt` sequences of that prompt alone. No answer depends on the shard, the other prompts or
  the batch, so the gathered pairs are byte-identical whatever `pairs.shards` is. Each prompt's answers are
  cached as they are made (`results/pairs_cache/samples/<key>/`), so a killed job resumes where it stopped.
  The template, stop strings, guards and the vLLM path are generation's (tunesmith.generation.generate).
- `grade_answers`: every answer graded against the prompt's reference (exact or chrF) or by the recipe's
  judge (its rubric, backends and parse retries, tunesmith.judge.judge); each grade is cached per (grader,
  prompt, reference, answer) in a GradeCache (tunesmith.judge.judge_cache), so a rebuild grades only new answers.
- `build_pairs`: the best answer that passes the guards against the worst answer, when their grades differ
  by `min_margin` or more; every other sampled answer is quarantined with its reason, and the counts are
  reconciled (every answer is in exactly one place). Each pair records the SFT adapter's key, the prompt's
  sampling seed and every answer's grade (lineage). The pairs are then ingested as the preference source
  `on_policy` (tunesmith.data.ingest), so curation treats them as any other source.

Over 350 lines because the three jobs share one row format, the prompt ids and seeds, and the caches' layout:
apart, each module would import the others' halves of them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from pathlib import Path

from tunesmith.data.normalize import clean_text, match_key, normalize_text
from tunesmith.jobs.atomic import read_jsonl, write_json, write_jsonl
from tunesmith.jobs.progress import Progress
from tunesmith.judge.judge_cache import GradeCache, text_hash

log = logging.getLogger(__name__)

SOURCE_ID = "on_policy"
# Why a sampled answer is not in a pair.
REASONS = ("all_equal", "below_margin", "ungraded", "no_passing_answer", "not_extreme")


class PairsError(ValueError):
    """Prompts or samples that cannot make pairs; the message names the file and line or the recipe key."""


# ---- prompts --------------------------------------------------------------------------------------------

def prompt_seed(seed: int, prompt_id: str) -> int:
    """A prompt's sampling seed: from the recipe's seed and the prompt's id only (never its shard)."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{prompt_id}".encode()).digest()[:4], "big")


def _prompts_file(path: str, normalize: bool) -> list[dict]:
    found = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise PairsError(f"{where}: not JSON ({error.msg}) (pairs.prompts)") from None
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or not record["prompt"].strip():
                raise PairsError(f"{where}: needs a non-empty string 'prompt' (pairs.prompts)")
            reference = record.get("reference")
            if reference is not None and not isinstance(reference, str):
                raise PairsError(f"{where}: 'reference' must be a string (pairs.prompts)")
            text = normalize_text(record["prompt"]) if normalize else clean_text(record["prompt"])
            found.append({"id": str(record.get("id", line_number)), "prompt": text, "reference": reference,
                          "where": where})
    return found


def _curated_sft(path: str) -> list[dict]:
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["id", "prompt", "response", "split"]).to_pylist()
    return [{"id": str(row["id"]), "prompt": row["prompt"], "reference": row["response"],
             "where": f"{path} (row {row['id']})"} for row in table if row["split"] == "train"]


def read_prompts(settings: dict, seed: int, curated_sft: str | None = None, normalize: bool = False) -> list[dict]:
    """The prompts to answer, sorted by id: the curated SFT train split (each with its own answer as the
    reference) or `pairs.prompts`, a sample of `pairs.sample` drawn by seed from the ids (not from order)."""
    path = settings["prompts"]
    prompts = _prompts_file(path, normalize) if path else _curated_sft(curated_sft)
    ids = Counter(prompt["id"] for prompt in prompts)
    twice = sorted(name for name, count in ids.items() if count > 1)
    if twice:
        raise PairsError(f"{path or curated_sft}: prompt id {twice[0]!r} is used twice (pairs.prompts)")
    if not prompts:
        raise PairsError(f"{path or curated_sft}: no prompts to answer (pairs.prompts)")
    if settings["sample"] is not None and settings["sample"] < len(prompts):
        drawn = sorted(prompts, key=lambda prompt: hashlib.sha256(f"{seed}\0{prompt['id']}".encode()).hexdigest())
        prompts = drawn[: settings["sample"]]
    return sorted(prompts, key=lambda prompt: (len(prompt["id"]), prompt["id"]))


def shard_of(prompts: list[dict], shard: int, shards: int) -> list[dict]:
    if not 0 <= shard < shards:
        raise PairsError(f"shard {shard} of {shards} does not exist (pairs.shards)")
    return prompts[shard::shards]


# ---- sampling -------------------------------------------------------------------------------------------

def sampling_settings(settings: dict, generate: dict) -> dict:
    """generate_batched's / vllm_sampling's settings for on-policy answers: pairs.sampling over generation's
    stop strings and penalty."""
    sampling = settings["sampling"]
    return {"max_new_tokens": sampling["max_new_tokens"], "do_sample": True, "temperature": sampling["temperature"],
            "top_p": sampling["top_p"], "repetition_penalty": generate["repetition_penalty"],
            "stop_strings": list(generate["stop_strings"]), "vllm": generate.get("vllm")}


def transformers_sampler(model, tokenizer):
    """`sample(prompts, n, settings, seeds)` on a transformers model: for each prompt, n sequences of it alone in
    one batch under its own seed (no padding, so nothing depends on the other prompts)."""
    import torch

    from tunesmith.generation.generate import cut_at_stop_strings

    def sample(prompts: list[str], n: int, settings: dict, seeds: list[int]) -> list[list[str]]:
        arguments = dict(max_new_tokens=settings["max_new_tokens"], do_sample=True, temperature=settings["temperature"],
                         top_p=settings["top_p"], repetition_penalty=settings["repetition_penalty"],
                         num_return_sequences=n, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id)
        if settings["stop_strings"]:
            arguments.update(stop_strings=settings["stop_strings"], tokenizer=tokenizer)
        answers = []
        for prompt, seed in zip(prompts, seeds):
            batch = tokenizer([prompt], return_tensors="pt").to(model.device)
            torch.manual_seed(seed)
            with torch.inference_mode():
                output = model.generate(**batch, **arguments)
            texts = tokenizer.batch_decode(output[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
            answers.append([cut_at_stop_strings(text, settings["stop_strings"]) for text in texts])
        return answers

    return sample


def vllm_sampler(base_path: str, base_section: dict, adapter: str | None, settings: dict, seed: int):
    """The same on vLLM: every prompt of a call in one engine batch, each request with n answers and its own
    seed (vLLM seeds per request), so no answer depends on the batch."""
    from vllm import SamplingParams

    from tunesmith.generation.generate import ModelError, cut_at_stop_strings, vllm_engine, vllm_sampling

    llm, lora_request = vllm_engine(base_path, base_section, adapter, settings, seed)

    def sample(prompts: list[str], n: int, some_settings: dict, seeds: list[int]) -> list[list[str]]:
        requests = [SamplingParams(**vllm_sampling(some_settings, some_seed), n=n) for some_seed in seeds]
        outputs = llm.generate(prompts, requests, lora_request=lora_request, use_tqdm=False)
        if [output.prompt for output in outputs] != list(prompts):
            raise ModelError("vLLM returned its answers in another order than the prompts")
        return [[cut_at_stop_strings(choice.text, some_settings["stop_strings"]) for choice in output.outputs]
                for output in outputs]

    return sample


def _cached_row(path: Path, prompt: dict, seed: int) -> dict | None:
    try:
        row = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # not ours (entries are written whole): sample again
    return row if row.get("prompt") == prompt["prompt"] and row.get("seed") == seed else None


def sample_prompts(sample, prompts: list[dict], settings: dict, sampling: dict, guards: dict, clean, seed: int,
                   cache_dir: str | os.PathLike, chunk: int = 32) -> list[dict]:
    """Each prompt's answers, sampled `chunk` prompts per call of `sample` and cached per prompt as each call
    returns: a killed job resumes without sampling again what it made."""
    from tunesmith.generation.guards import output_problems

    cache = Path(cache_dir)
    seeds = {prompt["id"]: prompt_seed(seed, prompt["id"]) for prompt in prompts}
    rows = {prompt["id"]: _cached_row(cache / f"{text_hash(prompt['id'])}.json", prompt, seeds[prompt["id"]])
            for prompt in prompts}
    todo = [prompt for prompt in prompts if rows[prompt["id"]] is None]
    log.info("%d prompts to answer: %d sampled before (cache), %d to sample", len(prompts), len(prompts) - len(todo),
             len(todo))
    made = Progress("sample", len(todo), "prompts answered", every=10)
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        sampled = sample([prompt["prompt"] for prompt in part], settings["answers_per_prompt"], sampling,
                         [seeds[prompt["id"]] for prompt in part])
        for prompt, raws in zip(part, sampled):
            answers = []
            for raw in raws:
                output = clean(raw)
                answers.append({"output": output, "raw_output": raw, "problems": output_problems(output, guards)})
            row = {"prompt_id": prompt["id"], "prompt": prompt["prompt"], "reference": prompt["reference"],
                   "seed": seeds[prompt["id"]], "answers": answers}
            write_json(cache / f"{text_hash(prompt['id'])}.json", row)
            rows[prompt["id"]] = row
        made.update(made.done + len(part))
    made.close()
    return [rows[prompt["id"]] for prompt in prompts]


def sample_answers(base_path: str, base_section: dict, adapter: str, template_section: dict, settings: dict,
                   generate: dict, seed: int, shard: int, shards: int, out_path: str, cache_dir: str,
                   sft_key: str, curated_sft: str | None = None, threads: int = 1,
                   normalize_prompts: bool = False) -> int:
    """Sample `answers_per_prompt` answers to each prompt of one shard with the SFT model (base + its adapter
    folder, unmerged, on transformers or vLLM), and write them with their guards' problems as JSONL."""
    import torch

    from tunesmith.generation.generate import check_backend, check_template
    from tunesmith.model.model import load_model, load_tokenizer
    from tunesmith.model.template import PromptTemplate

    torch.set_num_threads(threads)
    template = PromptTemplate(template_section)
    check_template(adapter, template, allow_mismatch=template_section["allow_mismatch"])
    check_backend(generate)
    prompts = shard_of(read_prompts(settings, seed, curated_sft, normalize_prompts), shard, shards)
    tokenizer = load_tokenizer(base_path, base_section, padding_side="left")
    for prompt in prompts:
        prompt["prompt_text"] = prompt["prompt"]
        prompt["prompt"] = template.render_prompt(prompt["prompt"], tokenizer)
    sampling = sampling_settings(settings, generate)
    if generate["backend"] == "vllm":  # one engine batch per call: a chunk of a few hundred prompts
        sample, chunk = vllm_sampler(base_path, base_section, adapter, sampling, seed), 256
    else:  # one prompt's answers per model.generate: a chunk is only how often the cache is written
        sample, chunk = transformers_sampler(load_model(base_path, base_section, adapter=adapter), tokenizer), 8
    rows = sample_prompts(sample, prompts, settings, sampling, generate["guards"], template.clean_output, seed,
                          cache_dir, chunk)
    texts = {prompt["id"]: prompt["prompt_text"] for prompt in prompts}
    log.info("sampled %d answers to %d prompts (shard %d of %d)", sum(len(row["answers"]) for row in rows),
             len(rows), shard + 1, shards)
    return write_jsonl(out_path, ({**row, "prompt": texts[row["prompt_id"]], "sft_adapter": sft_key} for row in rows))


# ---- grading --------------------------------------------------------------------------------------------

def reference_grade(answer: str, reference: str, metric: str) -> float:
    """exact: 1.0 when the normalised texts match, else 0.0; chrf: sentence chrF (0–100) on normalised text."""
    if metric == "exact":
        return 1.0 if match_key(answer) == match_key(reference) else 0.0
    from sacrebleu.metrics import CHRF

    return round(CHRF().sentence_score(normalize_text(answer), [normalize_text(reference)]).score, 6)


def grader_identity(grader: dict, judge: dict | None) -> dict:
    if grader["kind"] == "references":
        return {"kind": "references", "metric": grader["metric"]}
    from tunesmith.judge.judge_backends import judge_identity
    from tunesmith.judge.rubric import load_rubric

    return {"kind": "judge", "judge": judge_identity(judge), "rubric": load_rubric(judge["prompt_template"]).hash}


def grader_name(grader: dict, judge: dict | None) -> str:
    """The grader in words, recorded on every pair."""
    if grader["kind"] == "references":
        return f"references ({grader['metric']})"
    from tunesmith.judge.judge_backends import judge_identity

    identity = judge_identity(judge)
    return f"judge ({identity['backend']} {identity['model']})"


def grade_rows(rows: list[dict], grader: dict, judge: dict | None, cache_dir: str | os.PathLike, seed: int = 0,
               work_dir: str = ".", threads: int = 1, backend_factory=None) -> dict:
    """Grade every answer of `rows` in place (answer["grade"], None when the judge's reply had no grade),
    asking only about answers the cache has not graded. Returns counts."""
    cache = GradeCache(cache_dir)
    identity = grader_identity(grader, judge)
    items = []  # (answer, cache key, prompt row)
    for row in rows:
        for answer in row["answers"]:
            parts = {"grader": identity, "prompt": row["prompt"], "reference": row["reference"],
                     "answer": text_hash(answer["output"])}
            items.append((answer, text_hash(json.dumps(parts, sort_keys=True, ensure_ascii=False)), row))
    pending = []
    for answer, key, row in items:
        hit = cache.get(key)
        if hit is not None:
            answer["grade"] = hit["grade"]
        else:
            pending.append((answer, key, row))
    log.info("%d answers to grade (%s): %d in the cache, %d to grade", len(items), identity["kind"],
             len(items) - len(pending), len(pending))
    graded = Progress("grade", len(pending), "answers graded", every=50)
    if grader["kind"] == "references":
        for answer, key, row in pending:
            if row["reference"] is None:
                raise PairsError(f"prompt {row['prompt_id']}: no reference answer to grade against "
                                 "(pairs.grader.kind: references); give each prompt a 'reference' or use the judge")
            answer["grade"] = reference_grade(answer["output"], row["reference"], grader["metric"])
            cache.put(key, {"grade": answer["grade"], "grader": identity})
            graded.update()
        requests = 0
    else:
        requests = _judge_grade(pending, judge, cache, identity, seed, work_dir, threads, backend_factory, graded)
    graded.close()
    return {"answers": len(items), "cached": len(items) - len(pending), "requests": requests}


def _judge_grade(pending, judge: dict, cache: GradeCache, identity: dict, seed: int, work_dir: str, threads: int,
                 backend_factory, graded: Progress) -> int:
    from tunesmith.judge.judge import Item, grade
    from tunesmith.judge.judge_backends import make_backend
    from tunesmith.judge.rubric import load_rubric

    rubric = load_rubric(judge["prompt_template"])
    items, by_index = [], {}
    for index, (answer, key, row) in enumerate(pending):
        prompt = rubric.render(input=row["prompt"], answer=answer["output"],
                               reference=normalize_text(row["reference"]) if row["reference"] else None)
        items.append(Item(index, answer["output"], prompt, key))
        by_index[index] = answer

    def on_graded(item, entry: dict) -> None:
        by_index[item.task_id]["grade"] = entry["grade"]
        cache.put(item.key, {**entry, "grader": identity})
        graded.update()

    factory = backend_factory or (lambda: make_backend(judge, seed, work_dir, threads))
    return grade(items, factory, judge["parse_retries"], on_graded)


def grade_answers(samples_path: str, grader: dict, out_path: str, cache_dir: str, judge: dict | None = None,
                  seed: int = 0, threads: int = 1) -> dict:
    """Grade one shard's sampled answers and write them with their grades, in the samples' order."""
    rows = read_jsonl(samples_path)
    counts = grade_rows(rows, grader, judge, cache_dir, seed, os.path.dirname(os.path.abspath(out_path)), threads)
    write_jsonl(out_path, ({**row, "grader": grader_name(grader, judge)} for row in rows))
    log.info("graded %d answers: %d from the cache, %d judge requests", counts["answers"], counts["cached"],
             counts["requests"])
    return counts


# ---- pairs ----------------------------------------------------------------------------------------------

def pairs_of(rows: list[dict], min_margin: float) -> tuple[list[dict], list[dict]]:
    """(pairs, quarantined answers) from graded rows, in prompt-id order. A pair is the best-graded answer that
    passes the guards against the worst-graded answer, their grades min_margin or more apart; ties are broken
    by answer order. Every other answer is quarantined with its reason."""
    pairs, quarantine = [], []

    def out(row, index, reason, detail=""):
        answer = row["answers"][index]
        quarantine.append({"prompt_id": row["prompt_id"], "answer_index": index, "reason": reason, "detail": detail,
                           "output": answer["output"], "grade": answer.get("grade"), "problems": answer["problems"]})

    for row in sorted(rows, key=lambda row: (len(row["prompt_id"]), row["prompt_id"])):
        answers = row["answers"]
        graded = [index for index, answer in enumerate(answers) if answer.get("grade") is not None]
        for index in range(len(answers)):
            if index not in graded:
                out(row, index, "ungraded", "the judge's replies held no grade")
        if not graded:
            continue
        grades = [answers[index]["grade"] for index in graded]
        if max(grades) == min(grades):
            for index in graded:
                out(row, index, "all_equal", f"every answer graded {grades[0]}")
            continue
        passing = [index for index in graded if not answers[index]["problems"]]
        if not passing:
            for index in graded:
                out(row, index, "no_passing_answer", "every graded answer fails the guards")
            continue
        chosen = max(passing, key=lambda index: (answers[index]["grade"], -index))
        rejected = min(graded, key=lambda index: (answers[index]["grade"], -index))
        margin = answers[chosen]["grade"] - answers[rejected]["grade"]
        if margin < min_margin or margin <= 0:
            for index in graded:
                out(row, index, "below_margin", f"best passing {answers[chosen]['grade']} vs worst "
                    f"{answers[rejected]['grade']}, under pairs.min_margin {min_margin}")
            continue
        for index in graded:
            if index not in (chosen, rejected):
                out(row, index, "not_extreme", f"graded {answers[index]['grade']}, between the pair's")
        pairs.append({"prompt": row["prompt"], "chosen": answers[chosen]["output"],
                      "rejected": answers[rejected]["output"], "prompt_id": row["prompt_id"],
                      "sft_adapter": row["sft_adapter"], "seed": row["seed"], "grader": row["grader"],
                      "chosen_index": chosen, "rejected_index": rejected, "margin": margin,
                      "grades": [answer.get("grade") for answer in answers]})
    return pairs, quarantine


def pairs_source(pairs_path: str) -> dict:
    """The preference source curation reads the pairs as."""
    return {"id": SOURCE_ID, "path": str(pairs_path), "format": "jsonl", "role": "preference", "style": "preference"}


def build_pairs(graded_paths: list[str], min_margin: float, pairs_path: str, quarantine_path: str,
                summary_path: str, ingested_path: str) -> dict:
    """Gather the shards' graded answers, make the pairs, reconcile every sampled answer, write the pairs,
    the quarantine and a summary, and ingest the pairs as the preference source `on_policy`."""
    from tunesmith.data.ingest import ingest_source

    rows = [row for path in graded_paths for row in read_jsonl(path)]
    ids = Counter(row["prompt_id"] for row in rows)
    if any(count > 1 for count in ids.values()):
        raise PairsError(f"prompt {next(name for name, count in ids.items() if count > 1)!r} is in two shards")
    pairs, quarantine = pairs_of(rows, min_margin)
    sampled = sum(len(row["answers"]) for row in rows)
    if 2 * len(pairs) + len(quarantine) != sampled:
        raise PairsError(f"{sampled} answers sampled, but {len(pairs)} pairs and {len(quarantine)} quarantined")
    if not pairs:
        reasons = dict(Counter(entry["reason"] for entry in quarantine))
        raise PairsError(f"no prompt of {len(rows)} gave a pair ({reasons}); lower pairs.min_margin, sample more "
                         "answers (pairs.answers_per_prompt) or prompts (pairs.sample)")
    summary = {"prompts": len(rows), "answers": sampled, "pairs": len(pairs), "paired_answers": 2 * len(pairs),
               "quarantined": dict(sorted(Counter(entry["reason"] for entry in quarantine).items())),
               "min_margin": min_margin, "grader": sorted({row["grader"] for row in rows})}
    write_jsonl(quarantine_path, quarantine)
    write_jsonl(pairs_path, pairs)
    write_json(summary_path, summary)
    ingest_source(pairs_source(pairs_path), ingested_path)
    log.info("%d pairs from %d prompts (%d answers); quarantined %s", len(pairs), len(rows), sampled,
             summary["quarantined"] or "nothing")
    return summary


def pairs_origin(outputs, root: str | os.PathLike = ".") -> list[str]:
    """For `tunesmith lineage`: what a build_pairs job's pairs file says of the model that wrote them."""
    path = next((Path(root) / name for name in outputs if name.endswith("pairs.jsonl")), None)
    if path is None or not path.is_file():
        return []
    pairs = read_jsonl(path)
    adapters = sorted({pair["sft_adapter"] for pair in pairs})
    graders = sorted({pair["grader"] for pair in pairs})
    models = ", ".join(f"results/sft/{key}/adapter" for key in adapters)
    shown = path.relative_to(root) if path.is_relative_to(root) else path
    return [f"on-policy pairs: {len(pairs)}, sampled from SFT adapter {models}, graded by {', '.join(graders)}; "
            f"each pair's prompt id, sampling seed and every answer's grade in {shown}"]

