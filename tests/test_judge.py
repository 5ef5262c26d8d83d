"""The judge for real: rubric rendering, reply parsing, the cache, and grading through the `openai`
client against `transformers serve` on 127.0.0.1 with a tiny random model (its replies are nonsense,
which is what exercises the parsing fallbacks and the unparseable count), plus stub servers on
127.0.0.1 for retries on 429 and bounded concurrency, and the local transformers backend."""

import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from judge_server import build_tiny_judge, serving
from tunesmith.config.recipe import validate_recipe
from tunesmith.jobs.manifest import write_manifest
from tunesmith.judge.judge import judge_answers
from tunesmith.judge.judge_backends import JudgeError
from tunesmith.judge.judge_cache import GradeCache
from tunesmith.judge.rubric import RubricError, load_rubric, parse_reply

TASKS = [{"task_id": 0, "input": "日本の首都はどこですか？"}, {"task_id": 1, "input": "1+1は？"},
         {"task_id": 2, "input": "「もり」を3回繰り返してください。"}]
ANSWERS = {0: "東京です。", 1: "2です。", 2: "もりもりもり"}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def judge_settings(**changes):
    """A recipe's judge section with defaults filled, changed as asked (dotted keys one level deep)."""
    recipe = validate_recipe({"sources": [{"id": "a", "path": "a.jsonl"}, {"id": "b", "path": "b.jsonl",
                                           "role": "preference"}, {"id": "t", "path": "t.txt", "format": "text",
                                                                    "role": "pretrain"}]})
    judge = recipe["judge"]
    for dotted, value in changes.items():
        section, _, key = dotted.rpartition(".")
        (judge[section] if section else judge)[key] = value
    return judge


@pytest.fixture
def files(tmp_path):
    tasks = write_jsonl(tmp_path / "tasks.jsonl", TASKS)
    generations = write_jsonl(tmp_path / "dpo.jsonl", [{"task_id": k, "output": v} for k, v in ANSWERS.items()])
    return tasks, generations


# ---- the rubric ---------------------------------------------------------------------------------

def test_the_shipped_rubric_with_reference_and_aspect():
    text = load_rubric().render(input="問題文", answer="回答文", reference="正解文", eval_aspect="- 固有の基準")
    for part in ("# 問題\n問題文", "# 正解例\n正解文", "問題固有の採点基準\n- 固有の基準", "# 回答\n回答文",
                 "不自然な日本語: -1点", "部分的に事実と異なる内容", "過度に安全性を気にしてしまっている: 2点にする",
                 "- 1点: 誤っている", "- 5点: 役に立つ", '{"reason"'):
        assert part in text, part
    assert text.index("# 問題") < text.index("# 正解例") < text.index("# 採点基準") < text.index("# 回答")


def test_the_shipped_rubric_without_reference_or_aspect_says_neither():
    text = load_rubric().render(input="問題文", answer="回答文")
    assert "正解例" not in text and "問題固有の採点基準" not in text
    assert "# 問題\n問題文" in text and "# 回答\n回答文" in text
    only_aspect = load_rubric().render(input="問題文", answer="回答文", eval_aspect="基準X")
    assert "正解例" not in only_aspect and "問題固有の採点基準\n基準X" in only_aspect


def test_a_replacement_template_is_checked_and_changes_the_hash(tmp_path):
    good = tmp_path / "mine.jinja"
    good.write_text("Q: {{ input }}\nA: {{ answer }}\n{% if reference %}R: {{ reference }}{% endif %}", encoding="utf-8")
    rubric = load_rubric(str(good))
    assert rubric.render(input="q", answer="a") == "Q: q\nA: a\n"
    assert rubric.hash != load_rubric().hash
    no_answer = tmp_path / "no_answer.jinja"
    no_answer.write_text("Q: {{ input }}", encoding="utf-8")
    with pytest.raises(RubricError, match=r"no_answer.jinja: never shows \{\{ answer \}\}"):
        load_rubric(str(no_answer))
    typo = tmp_path / "typo.jinja"
    typo.write_text("{{ input }} {{ answr }} {{ answer }}", encoding="utf-8")
    with pytest.raises(RubricError, match="unknown variable.*answr"):
        load_rubric(str(typo))
    broken = tmp_path / "broken.jinja"
    broken.write_text("{{ input }}\n{% if %}{{ answer }}", encoding="utf-8")
    with pytest.raises(RubricError, match=r"broken.jinja:2: not a valid Jinja template"):
        load_rubric(str(broken))


# ---- reading replies ----------------------------------------------------------------------------

REPLIES = [
    ('{"reason": "正しい", "grade": 4}', 4, "正しい"),
    ('```json\n{\n  "reason": "方向性は合っているが誤り",\n  "grade": 2\n}\n```', 2, "方向性は合っているが誤り"),
    ('採点します。\n{"reason": "完璧", "grade": "5"}\n以上です。', 5, "完璧"),
    ('{"grade": 3.0, "reason": "部分的"}', 3, "部分的"),
    ('{"理由": "自然な日本語", "評価": 4}', 4, "自然な日本語"),
    ("不自然な日本語のため-1点とします。\n評価: 4", 4, None),
    ("評価：３", 3, None),  # full-width colon and digit
    ("この回答は3点です。", 3, None),
    ("Score: 2/5", 2, None),
    ("Rating: [[5]]", 5, None),
    ('{"reason": "x", "grade": 7}\n評価: 2', 2, None),  # out of range in JSON, the free text counts
    ("\n\n\n\n", None, None),
    ("だからもりもりもり。。。", None, None),
    ('{"reason": "no grade here"}', None, None),
    ("10点満点中8点", None, None),
    ("", None, None),
]


@pytest.mark.parametrize("reply, grade, reason", REPLIES)
def test_grades_are_read_from_realistic_replies(reply, grade, reason):
    verdict = parse_reply(reply)
    assert verdict.grade == grade
    if reason is not None:
        assert verdict.reason == reason
    if grade is None:
        assert verdict.reason == reply.strip()  # the reply is kept as the reason: nothing is lost


# ---- stub endpoints on 127.0.0.1: retries and bounded concurrency ---------------------------------

class Stub(BaseHTTPRequestHandler):
    """A minimal OpenAI-compatible server: /v1/models, and /v1/chat/completions with scripted failures."""
    failures_left = 0
    delay = 0.0
    in_flight = 0
    most_in_flight = 0
    completions = 0
    lock = threading.Lock()
    reply = '{"reason": "良い", "grade": 4}'

    def log_message(self, *args):
        pass

    def _send(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send(200, {"object": "list", "data": [{"id": "stub", "object": "model"}]})

    def do_POST(self):
        self.rfile.read(int(self.headers["content-length"]))
        cls = type(self)
        with cls.lock:
            cls.completions += 1
            cls.in_flight += 1
            cls.most_in_flight = max(cls.most_in_flight, cls.in_flight)
            failing = cls.failures_left > 0
            cls.failures_left -= failing
        time.sleep(cls.delay)
        with cls.lock:
            cls.in_flight -= 1
        if failing:
            self._send(429, {"error": {"message": "slow down"}}, [("retry-after-ms", "10")])
            return
        self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": "stub",
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": cls.reply}}]})


@pytest.fixture
def stub():
    handler = type("Handler", (Stub,), {"lock": threading.Lock()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_a_429_is_retried_with_backoff_and_then_graded(stub, files, tmp_path):
    handler, url = stub
    handler.failures_left = 2
    tasks, generations = files
    settings = judge_settings(backend="openai", **{"openai.base_url": url, "openai.model": "stub",
                                                   "openai.max_retries": 3, "openai.concurrency": 1})
    stats = judge_answers(str(generations), str(tasks), None, settings, 0, str(tmp_path / "out.jsonl"),
                          str(tmp_path / "cache"))
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [row["grade"] for row in rows] == [4, 4, 4] and all(row["status"] == "graded" for row in rows)
    assert handler.completions == 3 + 2 and stats["requests"] == 3  # two 429s retried inside one request


def test_requests_in_flight_are_bounded_by_concurrency(stub, tmp_path):
    handler, url = stub
    handler.delay = 0.15
    tasks = write_jsonl(tmp_path / "tasks.jsonl", [{"task_id": i, "input": f"問{i}"} for i in range(12)])
    generations = write_jsonl(tmp_path / "g.jsonl", [{"task_id": i, "output": f"答{i}"} for i in range(12)])
    settings = judge_settings(backend="openai", **{"openai.base_url": url, "openai.model": "stub",
                                                   "openai.concurrency": 3})
    started = time.perf_counter()
    judge_answers(str(generations), str(tasks), None, settings, 0, str(tmp_path / "out.jsonl"), str(tmp_path / "c"))
    assert handler.most_in_flight == 3
    assert time.perf_counter() - started < 12 * 0.15, "requests were not sent concurrently"


def test_an_unreachable_endpoint_fails_before_grading_and_names_it(files, tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    tasks, generations = files
    url = f"http://127.0.0.1:{port}/v1"
    settings = judge_settings(backend="openai", **{"openai.base_url": url, "openai.model": "m",
                                                   "openai.timeout": 5})
    with pytest.raises(JudgeError, match=rf"judge endpoint {url} \(judge.openai.base_url\) is unreachable"):
        judge_answers(str(generations), str(tasks), None, settings, 0, str(tmp_path / "out.jsonl"),
                      str(tmp_path / "cache"))
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "cache").exists()


def test_a_named_key_variable_that_is_unset_is_an_error(files, tmp_path, monkeypatch):
    monkeypatch.delenv("TUNESMITH_NO_SUCH_KEY", raising=False)
    tasks, generations = files
    settings = judge_settings(backend="openai", **{"openai.base_url": "http://127.0.0.1:9/v1", "openai.model": "m",
                                                   "openai.api_key_env": "TUNESMITH_NO_SUCH_KEY"})
    with pytest.raises(JudgeError, match="TUNESMITH_NO_SUCH_KEY, which is not set"):
        judge_answers(str(generations), str(tasks), None, settings, 0, str(tmp_path / "o.jsonl"), str(tmp_path / "c"))


# ---- transformers serve on 127.0.0.1 ------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_judge(tmp_path_factory):
    return build_tiny_judge(tmp_path_factory.mktemp("judge_model"))


@pytest.fixture(scope="module")
def served(tiny_judge, tmp_path_factory):
    """`transformers serve --device cpu` with the tiny model on 127.0.0.1; stopped after the module."""
    with serving(tiny_judge, tmp_path_factory.mktemp("serve") / "serve.log") as url:
        yield url, tiny_judge


SECRET = "sk-tunesmith-test-7f3a9c1e5b"


def test_grading_through_transformers_serve(served, files, tmp_path, monkeypatch):
    """Nonsense replies: retried, then recorded and counted as unparseable; a rerun asks nothing; one
    changed answer asks again about that answer only; the key is nowhere on disk."""
    url, model = served
    tasks, generations = files
    monkeypatch.setenv("TUNESMITH_JUDGE_KEY", SECRET)
    settings = judge_settings(backend="openai", max_new_tokens=16, parse_retries=1,
                              **{"openai.base_url": url, "openai.model": model,
                                 "openai.api_key_env": "TUNESMITH_JUDGE_KEY", "openai.concurrency": 3})
    log_file = tmp_path / "judge.log"
    handler = logging.FileHandler(log_file, encoding="utf-8")
    root = logging.getLogger()
    level, root.level = root.level, logging.DEBUG  # the most the client could ever log
    # Libraries imported by earlier tests quiet their clients' loggers (huggingface_hub: httpx): undo it here.
    clients = {name: (logging.getLogger(name).level, logging.getLogger(name).disabled)
               for name in ("openai", "httpx", "httpcore")}
    for name in clients:
        logging.getLogger(name).setLevel(logging.DEBUG)
        logging.getLogger(name).disabled = False
    root.addHandler(handler)
    try:
        out, cache = tmp_path / "judged" / "dpo.jsonl", tmp_path / "cache"
        first = judge_answers(str(generations), str(tasks), None, settings, 0, str(out), str(cache))
        rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        assert [row["task_id"] for row in rows] == [0, 1, 2]
        assert [row["answer"] for row in rows] == list(ANSWERS.values())
        assert first == {"answers": 3, "cached": 0, "requests": 6, "unparseable": 3}
        for row in rows:
            assert row["status"] == "unparseable" and row["grade"] is None and row["attempts"] == 2
            assert isinstance(row["reply"], str)
        assert len(list(cache.rglob("*.json"))) == 3

        again = judge_answers(str(generations), str(tasks), None, settings, 0, str(out), str(cache))
        assert again == {"answers": 3, "cached": 3, "requests": 0, "unparseable": 3}

        changed = write_jsonl(tmp_path / "dpo2.jsonl", [{"task_id": k, "output": v + ("!" if k == 1 else "")}
                                                       for k, v in ANSWERS.items()])
        rebuilt = judge_answers(str(changed), str(tasks), None, settings, 0, str(out), str(cache))
        assert rebuilt == {"answers": 3, "cached": 2, "requests": 2, "unparseable": 3}  # 1 answer, 1 retry
        write_manifest("judge_dpo", [str(changed)], [str(out)], {"judge": settings, "seed": 0}, "now")
    finally:
        root.removeHandler(handler)
        handler.close()
        root.level = level
        for name, (client_level, disabled) in clients.items():
            logging.getLogger(name).setLevel(client_level)
            logging.getLogger(name).disabled = disabled
    assert "POST" in log_file.read_text(encoding="utf-8") or log_file.stat().st_size > 0
    for file in tmp_path.rglob("*"):
        if file.is_file():
            assert SECRET not in file.read_text(encoding="utf-8", errors="replace"), file


def test_the_local_transformers_backend_grades_in_batches(tiny_judge, files, tmp_path):
    tasks, generations = files
    settings = judge_settings(backend="transformers", max_new_tokens=8, parse_retries=0,
                              **{"local.path": tiny_judge, "local.batch_size": 2})
    stats = judge_answers(str(generations), str(tasks), None, settings, 0, str(tmp_path / "o.jsonl"),
                          str(tmp_path / "cache"))
    assert stats["requests"] == 3 and stats["answers"] == 3
    rows = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text(encoding="utf-8").splitlines()]
    assert all((row["grade"] is None) == (row["status"] == "unparseable") for row in rows)
    assert judge_answers(str(generations), str(tasks), None, settings, 0, str(tmp_path / "o.jsonl"),
                         str(tmp_path / "cache"))["requests"] == 0


def test_the_cache_keys_on_judge_prompt_task_and_answer(stub, files, tmp_path):
    handler, url = stub
    tasks, generations = files
    base = {"openai.base_url": url, "openai.model": "stub"}
    cache = str(tmp_path / "cache")

    def requests(settings, references=None, answers=generations):
        return judge_answers(str(answers), str(tasks), references, settings, 0, str(tmp_path / "o.jsonl"), cache)["requests"]

    assert requests(judge_settings(backend="openai", **base)) == 3
    assert requests(judge_settings(backend="openai", **base, **{"openai.concurrency": 2})) == 0  # not a grade's business
    assert requests(judge_settings(backend="openai", **{**base, "openai.model": "other"})) == 3
    assert requests(judge_settings(backend="openai", max_new_tokens=100, **base)) == 3
    template = tmp_path / "t.jinja"
    template.write_text("{{ input }} {{ answer }}", encoding="utf-8")
    assert requests(judge_settings(backend="openai", prompt_template=str(template), **base)) == 3
    references = write_jsonl(tmp_path / "refs.jsonl", [{"task_id": 1, "output": "2"}])
    assert requests(judge_settings(backend="openai", **base), references=str(references)) == 1  # task 1's prompt changed


def test_an_entry_that_is_not_json_is_graded_again(tmp_path):
    cache = GradeCache(tmp_path)
    cache.put("ab" + "0" * 62, {"grade": 3})
    assert cache.get("ab" + "0" * 62) == {"grade": 3}
    (tmp_path / "ab" / ("ab" + "0" * 62 + ".json")).write_text("{trunc", encoding="utf-8")
    assert cache.get("ab" + "0" * 62) is None
    assert not list(tmp_path.rglob("*.partial"))


def test_the_vllm_backend_is_refused_before_loading_without_vllm(files, tmp_path, monkeypatch):
    import builtins

    from tunesmith.model.model import ModelError

    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *args, **kwargs: (_ for _ in ()).throw(
        ImportError(name)) if name == "vllm" else real_import(name, *args, **kwargs))
    tasks, generations = files
    settings = judge_settings(backend="vllm", **{"local.path": str(tmp_path / "no-model-here")})
    with pytest.raises(ModelError, match="vllm package is not installed"):
        judge_answers(str(generations), str(tasks), None, settings, 0, str(tmp_path / "o.jsonl"), str(tmp_path / "c"))
