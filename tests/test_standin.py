"""The real path on CPU: llm-jp-3's tokenizer checked against `sentencepiece`, and recipes/llm-jp-3-13b-qlora.yaml
run end to end through the workflow's rules on a stand-in model (tests/standin.py) with that tokenizer.

Both need `../shared/llm-jp-3-tokenizer` (developers and CI have it; a user's clone does not: skipped, with why).
"""

from __future__ import annotations

import json
import os
import resource
import time

import pytest
import yaml

from conftest import REPO, snakemake
from standin import BOS_ID, EOS_ID, PAD_ID, SKIP_REASON, SPM_FILE, TOKENIZER_DIR, TOKENIZER_PIECES

pytestmark = pytest.mark.skipif(not (TOKENIZER_DIR / SPM_FILE).is_file(), reason=SKIP_REASON)

RECIPE = REPO / "recipes/llm-jp-3-13b-qlora.yaml"

# Text as users write it: code with indentation and tabs, full-width punctuation and digits, circled numbers,
# nested Markdown, blank lines, runs of spaces, half-width kana, emoji. NFKC or space folding changes each.
PLANTED_INSTRUCTION = "次のPython関数を、負の数なら０を返すように直してください（インデントは空白４つ）。"
PLANTED_INPUT = "def clip(x):\n    return x"
PLANTED_ANSWER = (
    "修正しました！\n\n```python\ndef clip(x):\n    if x < 0:\n        return 0  # 負の数は０にする\n    return x\n```\n\n"
    "ポイント：\n- ①　条件分岐を追加（例：clip(-1) → 0）\n  - 入れ子の項目：ＡＢＣ、ｶﾀｶﾅもそのまま\n\t- タブで始まる行\n"
    "最後の行　　全角空白２つ"
)
PLANTED_TASK = "次のコードの誤りを直してください！\n```\nfor i in range(3):\n\tprint(i)  # 表示：①\n```\n（説明は１行で）"
REAL_TEXTS = [
    "### 指示\n「かぜ」を2回繰り返してください。\n### 回答\n",
    PLANTED_INSTRUCTION + "\n" + PLANTED_INPUT, PLANTED_ANSWER, PLANTED_TASK,
    "１兆円は1,000,000,000,000円、1億円は100,000,000円です。２進数では101101（４５）。",
    "| 項目 | 値 |\n|---|---|\n| 速度 | 12.5 km/h |\n\n> 引用：「ＡＩ」とは？\n\n    インデントされたコード\n",
    "  先頭の空白、　全角空白、末尾の空白   ",
    "絵文字😀👍🏽と㈱・℃・㍻、ﾊﾝｶｸｶﾀｶﾅ。",
    "",
    " ",
]


def shipped_texts() -> list[str]:
    """Every text field of the shipped sample data and tasks (real Japanese, a few thousand strings)."""
    texts = []
    for path in ("data/raw/sft.jsonl", "data/raw/preference.jsonl", "data/tasks.jsonl"):
        for line in (REPO / path).read_text(encoding="utf-8").splitlines():
            try:  # the samples hold planted dirt: lines that are not JSON objects are skipped
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                texts += [value for value in record.values() if isinstance(value, str)]
    return texts


@pytest.fixture(scope="module")
def tokenizer():
    from standin import llm_jp_tokenizer

    return llm_jp_tokenizer()


def test_fast_tokenizer_equals_sentencepiece_on_real_text(tokenizer):
    import sentencepiece

    from standin import _model_proto

    reference = sentencepiece.SentencePieceProcessor(model_file=str(TOKENIZER_DIR / SPM_FILE))
    texts = REAL_TEXTS + shipped_texts()
    assert len(texts) > 5000
    ours = tokenizer(texts, add_special_tokens=False)["input_ids"]
    theirs = reference.encode(texts)
    differing = [(text, mine, spm) for text, mine, spm in zip(texts, ours, theirs) if mine != spm]
    # Equal ids but for ties: two segmentations of exactly the same score (a run of one digit: '8' '88' or
    # '88' '8'), which the two Viterbi searches break differently. Same length, same text; nothing else may differ.
    scores = [piece.score for piece in _model_proto(TOKENIZER_DIR).pieces]
    untied = [(text, mine, spm) for text, mine, spm in differing
              if len(mine) != len(spm) or abs(sum(scores[i] for i in mine) - sum(scores[i] for i in spm)) > 1e-3]
    assert not untied, f"{len(untied)} texts encode differently, e.g. {untied[0]}"
    assert len(differing) <= len(texts) // 1000, differing[:5]
    assert all(tokenizer.decode(ids) == text for text, ids in zip(texts, ours)), "decode(encode(text)) != text"
    assert reference.decode(theirs[1]) == texts[1]
    # Whitespace is kept as pieces (the README's facts): indentation, and a newline as the byte piece.
    pieces = tokenizer.convert_ids_to_tokens(tokenizer(PLANTED_INPUT, add_special_tokens=False)["input_ids"])
    assert "▁▁▁" in pieces and "<0x0A>" in pieces, pieces
    assert len(tokenizer) == TOKENIZER_PIECES


def test_special_tokens_are_llm_jp_3s(tokenizer):
    """One BOS from encoding, none in decoded text; EOS written as text encodes to its id; pad is not EOS."""
    ids = tokenizer("### 指示\n質問\n### 回答\n")["input_ids"]
    assert ids[0] == BOS_ID and ids.count(BOS_ID) == 1
    assert tokenizer("回答" + tokenizer.eos_token, add_special_tokens=False)["input_ids"][-1] == EOS_ID
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (BOS_ID, EOS_ID, PAD_ID)
    assert tokenizer.convert_ids_to_tokens([3, 4, 5, 6]) == ["<MASK|LLM-jp>", "<PAD|LLM-jp>", "<CLS|LLM-jp>",
                                                             "<SEP|LLM-jp>"]


def test_the_builder_refuses_another_sentencepiece_model(tmp_path):
    from standin import StandinError, _model_proto, llm_jp_tokenizer

    proto = _model_proto(TOKENIZER_DIR)
    proto.normalizer_spec.name = "nmt_nfkc"
    (tmp_path / SPM_FILE).write_bytes(proto.SerializeToString())
    (tmp_path / "tokenizer_config.json").write_bytes((TOKENIZER_DIR / "tokenizer_config.json").read_bytes())
    with pytest.raises(StandinError, match="normalizer"):
        llm_jp_tokenizer(tmp_path)


# The stand-in run: recipes/llm-jp-3-13b-qlora.yaml with only what CPU forces changed.
SFT_STEPS, DPO_STEPS, NEW_TOKENS = 4, 3, 16
# Records kept of each of the recipe's sources: curation, DPO's reference pass and evaluation cost CPU time
# per row, at a 99,584-token LM head.
SOURCE_LINES = {"sft": 160, "preference": 60}
TASKS = ["「かぜ」を2回繰り返してください。", "次の単語をすべて大文字で書いてください。\nriver", PLANTED_TASK]


def cpu_recipe(work, standin: str, tasks: str, planted: str) -> dict:
    """The 13B recipe as read from its file, with the differences CPU forces: the stand-in for the base, no
    4-bit training (bitsandbytes trains only on CUDA; fp32 then), a few steps per stage, short answers, the
    first lines of each source (copied into `work`) and a small task file; plus one source with the planted
    code answer. Everything else (template, LoRA, lengths, batch sizes, learning rates, evaluation, curation
    with curate.tokens.count: base_model, guards) is the recipe's."""
    recipe = yaml.safe_load(RECIPE.read_text(encoding="utf-8"))
    for source in recipe["sources"]:
        lines = (REPO / source["path"]).read_text(encoding="utf-8").splitlines(keepends=True)
        source["path"] = str(work / f"{source['id']}.{source['format']}")
        (work / source["path"]).write_text("".join(lines[:SOURCE_LINES[source["role"]]]), encoding="utf-8")
    recipe["base_model"].update(path=standin, quantization="none", dtype="float32", compute_dtype="float32")
    recipe["sft"]["max_steps"], recipe["dpo"]["max_steps"] = SFT_STEPS, DPO_STEPS
    recipe["generate"]["max_new_tokens"] = NEW_TOKENS
    recipe["tasks"]["path"] = tasks
    recipe["sources"].append({"id": "planted_code", "path": planted, "format": "jsonl", "role": "sft"})
    return recipe


def one(directory, pattern):
    found = sorted(directory.glob(pattern))
    assert len(found) == 1, (pattern, found)
    return found[0]


@pytest.fixture(scope="module")
def standin_run(tmp_path_factory):
    from standin import build_standin

    work = tmp_path_factory.mktemp("standin_run")
    (work / "data").symlink_to(REPO / "data")
    standin = build_standin(work / "llm-jp-3-13b-standin")
    (work / "tasks.jsonl").write_text("".join(json.dumps({"task_id": index, "input": text}, ensure_ascii=False) + "\n"
                                              for index, text in enumerate(TASKS)), encoding="utf-8")
    (work / "planted.jsonl").write_text(json.dumps({"instruction": PLANTED_INSTRUCTION, "input": PLANTED_INPUT,
                                                    "output": PLANTED_ANSWER}, ensure_ascii=False) + "\n",
                                        encoding="utf-8")
    recipe = cpu_recipe(work, str(standin), str(work / "tasks.jsonl"), str(work / "planted.jsonl"))
    assert recipe["curate"]["tokens"]["count"] == "base_model", "the 13B recipe counts tokens with its tokenizer"
    (work / "recipe.yaml").write_text(yaml.safe_dump(recipe, allow_unicode=True, sort_keys=False), encoding="utf-8")
    started, cpu = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
    result = snakemake("--directory", work, "submission.jsonl", "--config", f"recipe={work / 'recipe.yaml'}",
                       "--cores", "2", "--resources", "gpu=1")
    (work / "console.txt").write_text(result.stdout + result.stderr, encoding="utf-8")
    assert result.returncode == 0, result.stderr[-6000:]
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"stand-in run: {time.monotonic() - started:.0f} s wall, "
          f"{used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime:.0f} s CPU, load {os.getloadavg()[0]:.1f}")
    return work, standin


@pytest.mark.e2e
def test_the_13b_recipe_runs_end_to_end_on_the_standin(standin_run):
    from tunesmith.generation.submission import validate_submission

    work, _ = standin_run
    assert validate_submission(work / "submission.jsonl", work / "tasks.jsonl") == len(TASKS)
    for stage in ("sft", "dpo"):
        metadata = json.loads((one(work, f"results/{stage}/*/adapter") / "tunesmith.json").read_text())
        assert metadata["stage"] == stage and metadata["rows"] > 0


@pytest.mark.e2e
def test_the_data_card_counts_real_tokens(standin_run):
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    work, standin = standin_run
    tokenizer = AutoTokenizer.from_pretrained(standin)
    for role, field in (("sft", "response"), ("preference", "chosen")):
        card = json.loads(one(work, f"results/curated/*/{role}.card.json").read_text())
        assert card["tokens"]["counted_by"] == "tokenizer" and card["tokens"]["tokenizer"] == str(standin), card["tokens"]
        kept = pq.read_table(one(work, f"results/curated/*/{role}.parquet")).column(field).to_pylist()
        counts = sorted(len(ids) for ids in tokenizer(kept, add_special_tokens=False)["input_ids"])
        name = "response" if role == "sft" else field
        shown = card["lengths"][name]["tokens"]
        assert (shown["count"], shown["min"], shown["max"]) == (len(counts), counts[0], counts[-1]), shown


@pytest.fixture(scope="module")
def sft_training_rows(standin_run, tmp_path_factory):
    """The SFT trainer exactly as `train_sft` builds it on the run's curated rows and base snapshot (stopped
    before its first step): its tokenised rows are what the run trained on."""
    import tunesmith.training.train as train
    from tunesmith.config.recipe import load_recipe

    work, _ = standin_run
    recipe = load_recipe(str(work / "recipe.yaml"))

    class Built(Exception):
        pass

    def stop(trainer, checkpoints):
        built["trainer"] = trainer
        raise Built

    built, original = {}, train._train
    train._train = stop
    try:
        with pytest.raises(Built):
            train.train_sft(base_path=str(one(work, "results/models/*/model")), base_section=recipe["base_model"],
                            template_section=recipe["template"], sft=recipe["sft"],
                            dataset_path=str(one(work, "results/curated/*/sft.parquet")), seed=recipe["seed"],
                            out_dir=str(tmp_path_factory.mktemp("sft_probe") / "sft"))
    finally:
        train._train = original
    return built["trainer"]


def learned(labels: list[int]) -> list[int]:
    return [label for label in labels if label != -100]  # trl's labels: -100 where no loss (the prompt, padding)


@pytest.mark.e2e
def test_training_rows_have_one_bos_learn_eos_and_pad_apart(sft_training_rows):
    trainer = sft_training_rows
    tokenizer = trainer.processing_class
    rows = trainer.train_dataset
    assert len(rows) > 0
    for row in rows:
        ids, labels = row["input_ids"], row["labels"]
        assert ids[0] == BOS_ID and ids.count(BOS_ID) == 1, tokenizer.convert_ids_to_tokens(ids[:4])
        assert labels[0] == -100 and learned(labels)[-1] == ids[-1] == EOS_ID, "EOS is not learned at the answer's end"
        assert EOS_ID not in ids[:-1]
    assert tokenizer.pad_token_id == PAD_ID != tokenizer.eos_token_id
    assert trainer.data_collator.pad_token_id == PAD_ID
    # A padded batch: pad id 4 fills, no loss on it, and each row still learns EOS last.
    lengths = [len(row["input_ids"]) for row in rows]
    shortest, longest = lengths.index(min(lengths)), lengths.index(max(lengths))
    assert lengths[shortest] < lengths[longest]
    batch = trainer.data_collator([rows[shortest], rows[longest]])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    assert ids[lengths[shortest]:] == [PAD_ID] * (lengths[longest] - lengths[shortest])
    assert set(labels[lengths[shortest]:]) == {-100} and learned(labels)[-1] == EOS_ID


@pytest.mark.e2e
def test_prompt_answer_boundary_holds_on_every_training_row(sft_training_rows):
    """The tokenised prompt is a prefix of the tokenised prompt + answer: the masked prompt is the context
    generation will see (where it is not, trl silently moves the boundary)."""
    trainer = sft_training_rows
    tokenizer = trainer.processing_class
    crossing = []
    for row in trainer.train_dataset:
        prompt_ids = tokenizer(row["prompt"])["input_ids"]
        first_learned = next(index for index, label in enumerate(row["labels"]) if label != -100)
        if first_learned != len(prompt_ids) or row["input_ids"][:len(prompt_ids)] != prompt_ids:
            crossing.append(row["prompt"])
    assert not crossing, f"{len(crossing)} rows' prompts end inside a token, e.g. {crossing[0]!r}"


@pytest.mark.e2e
def test_planted_code_answer_reaches_training_and_the_prompt_unchanged(standin_run, sft_training_rows):
    """Indentation, tabs, full-width punctuation and digits, circled numbers and half-width kana are trained
    on as written, and a task's input reaches the generation prompt as written."""
    import pyarrow.parquet as pq

    from tunesmith.config.recipe import load_recipe
    from tunesmith.data.tasks import read_tasks
    from tunesmith.model.template import PromptTemplate

    work, standin = standin_run
    kept = pq.read_table(one(work, "results/curated/*/sft.parquet")).to_pylist()
    planted = [row for row in kept if PLANTED_INPUT.splitlines()[0] in row["prompt"]]
    assert len(planted) == 1, "the planted code row was not kept"
    assert planted[0]["response"] == PLANTED_ANSWER
    assert PLANTED_INSTRUCTION in planted[0]["prompt"] and PLANTED_INPUT in planted[0]["prompt"]
    trainer = sft_training_rows
    tokenizer = trainer.processing_class
    # Curation puts a row on the training or validation side by its content hash: look on its side.
    side = trainer.train_dataset if planted[0]["split"] == "train" else trainer.eval_dataset
    (trained,) = [row for row in side if PLANTED_INPUT in row["prompt"]]
    assert trained["completion"] == PLANTED_ANSWER + tokenizer.eos_token
    assert tokenizer.decode(learned(trained["labels"])) == PLANTED_ANSWER + tokenizer.eos_token
    # Generation's prompt (tunesmith.generation.generate.generate_answers renders it so) holds the task input as written.
    recipe = load_recipe(str(work / "recipe.yaml"))
    task = read_tasks(work / "tasks.jsonl")[TASKS.index(PLANTED_TASK)]
    prompt = PromptTemplate(recipe["template"]).render_prompt(task.prompt_text, tokenizer)
    assert prompt == recipe["template"]["prompt"].replace("{input}", PLANTED_TASK)
