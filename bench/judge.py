"""Grading 100 answers through a local `transformers serve` endpoint: bounded concurrency against one
request at a time, then a rebuild after one answer changed.

    python bench/judge.py                 # options: --concurrency --max-new-tokens

The judge is a random tiny Llama built from a config (tests/judge_server.py): its replies are
nonsense, so `parse_retries` is 0 here and every answer costs exactly one request (the count on the
rebuild is then the number of answers graded again). Each timed pass starts with an empty cache.

`transformers serve` batches concurrent requests only with `--continuous-batching` (paged attention;
without it requests are generated one after the other whatever the client does). Continuous batching
makes a lone request slower, so the sequential baseline is timed on a plain server (the fastest way
to send one request at a time) and concurrency on a continuous-batching one; the table also shows
each client on the other server. Both servers run with OMP_NUM_THREADS=1 (tests/judge_server.py):
on shared cores, two spinning OpenMP threads made each request several times slower. Ends with one line:
RESULT judge ratio=<sequential s / concurrent s> rerun_requests=<requests sent on the rebuild>
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from _common import print_table  # noqa: E402
from judge_server import build_tiny_judge, serving  # noqa: E402
from tunesmith.config.recipe import load_recipe  # noqa: E402
from tunesmith.data.tasks import read_references, read_tasks  # noqa: E402
from tunesmith.jobs.atomic import write_jsonl  # noqa: E402
from tunesmith.judge.judge import judge_answers  # noqa: E402


def settings_for(url: str, model: str, concurrency: int, max_new_tokens: int) -> dict:
    judge = load_recipe(REPO / "recipes/default.yaml")["judge"]
    judge.update(backend="openai", max_new_tokens=max_new_tokens, parse_retries=0)
    judge["openai"].update(base_url=url, model=model, concurrency=concurrency)
    return judge


def timed(answers: Path, settings: dict, cache: Path, out: Path) -> tuple[float, dict]:
    started = time.perf_counter()
    stats = judge_answers(str(answers), str(REPO / "data/tasks.jsonl"), None, settings, 0, str(out), str(cache))
    return time.perf_counter() - started, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tasks = read_tasks(REPO / "data/tasks.jsonl")
    references = read_references(REPO / "data/references.jsonl")
    with tempfile.TemporaryDirectory(prefix="bench-judge-") as scratch:
        scratch = Path(scratch)
        model = build_tiny_judge(scratch / "judge")
        answers = scratch / "answers.jsonl"
        write_jsonl(answers, ({"task_id": task.task_id, "output": references[task.task_id]} for task in tasks))
        seconds, rows = {}, []
        for server, batching in (("plain", False), ("continuous batching", True)):
            with serving(model, scratch / f"serve-{batching}.log", continuous_batching=batching) as url:
                timed(answers, settings_for(url, model, 4, 4), scratch / f"warm-{batching}", scratch / "w.jsonl")
                for client, concurrency in (("one at a time", 1), (f"concurrency {args.concurrency}", args.concurrency)):
                    cache = scratch / f"cache-{batching}-{concurrency}"
                    settings = settings_for(url, model, concurrency, args.max_new_tokens)
                    elapsed, stats = timed(answers, settings, cache, scratch / "out.jsonl")
                    assert stats["requests"] == len(tasks), stats
                    seconds[(batching, concurrency)] = elapsed
                    rows.append([server, client, f"{elapsed:.2f}", f"{len(tasks) / elapsed:.1f}"])
                if batching:
                    changed = scratch / "changed.jsonl"
                    lines = answers.read_text(encoding="utf-8").splitlines()
                    first = json.loads(lines[0])
                    lines[0] = json.dumps({**first, "output": first["output"] + "（改）"}, ensure_ascii=False)
                    changed.write_text("\n".join(lines) + "\n", encoding="utf-8")
                    elapsed, rerun = timed(changed, settings, cache, scratch / "out.jsonl")
                    rows.append([server, "rebuild, 1 answer changed", f"{elapsed:.2f}", f"{rerun['requests']} requests"])
    print_table(["server", "client", "seconds", "answers/s"], rows, left=2)
    sequential, concurrent = seconds[(False, 1)], seconds[(True, args.concurrency)]
    print(f"same server: plain {seconds[(False, 1)] / seconds[(False, args.concurrency)]:.2f}x, "
          f"continuous batching {seconds[(True, 1)] / seconds[(True, args.concurrency)]:.2f}x")
    print(f"RESULT judge ratio={sequential / concurrent:.2f} rerun_requests={rerun['requests']}")


if __name__ == "__main__":
    main()
