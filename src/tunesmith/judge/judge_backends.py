"""Where the judge's replies come from: an OpenAI-compatible endpoint, or a local model.

Both take a list of conversations and call `on_reply(index, text)` as each reply arrives, so the
judge can cache a grade the moment it has it (a job stopped half-way keeps what it graded).

- `openai`: the official `openai` client against any OpenAI-compatible server (vLLM, `transformers
  serve`, llama.cpp, Ollama, the OpenAI API). At most `concurrency` requests are in flight; the
  client retries 408/409/429/5xx, connection errors and timeouts with exponential backoff and jitter
  (`max_retries`). The key is read from the environment variable the recipe names, and is never
  written anywhere: not in settings, logs (the client logs requests only at DEBUG, and never the
  Authorization header) nor error messages.
- `transformers` / `vllm`: a local model folder or hub id loaded with tunesmith's own loading code and
  batched like generation (`tunesmith.generation.generate`).
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed

log = logging.getLogger(__name__)

NO_KEY = "not-needed"  # local servers take any key; the client insists on one


class JudgeError(RuntimeError):
    """A judge that cannot grade; the message names the endpoint or model and the recipe key."""


def judge_identity(settings: dict) -> dict:
    """What decides a grade besides the prompt: the backend, the model and how it is sampled."""
    model = settings["openai"]["model"] if settings["backend"] == "openai" else settings["local"]["path"]
    identity = {"backend": settings["backend"], "model": model, "max_new_tokens": settings["max_new_tokens"],
                "temperature": settings["temperature"]}
    if settings["backend"] != "openai":
        identity.update({key: settings["local"][key] for key in ("dtype", "quantization")})
    return identity


class OpenAIJudge:
    def __init__(self, settings: dict, seed: int):
        section = settings["openai"]
        self.base_url, self.model = section["base_url"], section["model"]
        self.concurrency = section["concurrency"]
        self.settings, self.seed = settings, seed
        name = section["api_key_env"]
        key = NO_KEY
        if name:
            key = os.environ.get(name, "")
            if not key:
                raise JudgeError(f"judge.openai.api_key_env names the environment variable {name}, which is not "
                                 f"set; export it with the key for {self.base_url}")
        from openai import OpenAI

        self.client = OpenAI(base_url=self.base_url, api_key=key, timeout=section["timeout"],
                             max_retries=section["max_retries"])
        self.requests = 0
        self._lock = threading.Lock()

    def check_reachable(self) -> None:
        """Fail before grading, naming the endpoint, when nothing answers there."""
        import openai

        try:
            served = [model.id for model in self.client.with_options(max_retries=1, timeout=30).models.list()]
        except openai.APIConnectionError as error:  # timeouts included
            raise JudgeError(f"the judge endpoint {self.base_url} (judge.openai.base_url) is unreachable: "
                             f"{type(error).__name__}: {error.message}. Start the server or fix the URL.") from None
        except openai.AuthenticationError:
            raise JudgeError(f"the judge endpoint {self.base_url} refused the key "
                             f"(judge.openai.api_key_env: {self.settings['openai']['api_key_env']})") from None
        except openai.APIStatusError as error:  # a server without /models still serves completions
            log.info("%s/models answered %s; going on", self.base_url, error.status_code)
            return
        if served and self.model not in served:
            # Some servers load models on demand and list only loaded ones: say so, do not refuse.
            log.warning("judge model %s is not among the models %s lists: %s", self.model, self.base_url,
                        ", ".join(served[:10]))

    def _one(self, conversation: list[dict]) -> str:
        with self._lock:
            self.requests += 1
        import openai

        try:
            response = self.client.chat.completions.create(
                model=self.model, messages=conversation, max_tokens=self.settings["max_new_tokens"],
                temperature=self.settings["temperature"], seed=self.seed)
        except openai.APIConnectionError as error:
            raise JudgeError(f"the judge endpoint {self.base_url} stopped answering after "
                             f"{self.settings['openai']['max_retries']} retries: {error.message}") from None
        except openai.APIStatusError as error:
            raise JudgeError(f"the judge endpoint {self.base_url} answered {error.status_code} for model "
                             f"{self.model}: {error.message}") from None
        return response.choices[0].message.content or ""

    def complete(self, conversations: list[list[dict]], on_reply) -> None:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = {pool.submit(self._one, conversation): index for index, conversation in enumerate(conversations)}
            try:
                for future in as_completed(futures):
                    on_reply(futures[future], future.result())
            except BaseException:
                for future in futures:
                    future.cancel()
                raise


class LocalJudge:
    """A judge model loaded in this process: batched transformers generation, or vLLM's engine."""

    def __init__(self, settings: dict, seed: int, work_dir: str, threads: int = 1):
        import torch

        from tunesmith.model.model import load_tokenizer

        torch.set_num_threads(threads)
        section = settings["local"]
        self.path, self.seed, self.requests = section["path"], seed, 0
        model_section = {key: section[key] for key in ("dtype", "quantization", "compute_dtype", "trust_remote_code")}
        temperature = settings["temperature"]
        self.generation = {
            "max_new_tokens": settings["max_new_tokens"], "do_sample": temperature > 0,
            "temperature": temperature or 1.0, "top_p": 1.0, "repetition_penalty": 1.0, "stop_strings": [],
            "batch_size": section["batch_size"], "vllm": section["vllm"],
        }
        if settings["backend"] == "vllm":
            from tunesmith.generation.generate import check_backend

            check_backend({"backend": "vllm"})  # before loading anything
        self.tokenizer = load_tokenizer(self.path, model_section, padding_side="left")
        if settings["backend"] == "vllm":
            from tunesmith.generation.generate import vllm_generator

            self.generate = vllm_generator(self.path, model_section, None, self.generation, seed)
        else:
            from tunesmith.generation.generate import generate_batched
            from tunesmith.model.model import load_model

            model = load_model(self.path, model_section)
            self.generate = lambda prompts, generation, some_seed: generate_batched(
                model, self.tokenizer, prompts, generation, some_seed)

    def check_reachable(self) -> None:
        """Loaded in __init__: nothing to reach."""

    def prompt_text(self, conversation: list[dict]) -> str:
        """The conversation as the model's chat template writes it (plain turns without one), without a
        leading BOS: the tokenizer adds it when encoding, as in generation."""
        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        else:
            text = "\n\n".join(turn["content"] for turn in conversation) + "\n\n"
        bos = self.tokenizer.bos_token
        return text[len(bos):] if bos and text.startswith(bos) else text

    def complete(self, conversations: list[list[dict]], on_reply) -> None:
        self.requests += len(conversations)
        replies = self.generate([self.prompt_text(conversation) for conversation in conversations],
                                self.generation, self.seed)
        for index, reply in enumerate(replies):
            on_reply(index, reply)


def make_backend(settings: dict, seed: int, work_dir: str, threads: int = 1):
    if settings["backend"] == "openai":
        return OpenAIJudge(settings, seed)
    if settings["backend"] in ("transformers", "vllm"):
        return LocalJudge(settings, seed, work_dir, threads)
    raise JudgeError(f"judge.backend is {settings['backend']!r}: no judge to grade with")
