"""A tiny judge model and `transformers serve` running it on 127.0.0.1, for tests and bench/judge.py.

The model is a random 2-layer Llama built from a config with the tiny byte-level tokenizer (which has
a chat template), so its replies are nonsense: what the judge's parsing fallbacks must survive.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build_tiny_judge(folder: Path) -> str:
    """Build the model folder under `folder` (a few seconds) and return its path."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tunesmith.model.base_model import train_tokenizer

    folder = Path(folder)
    train_tokenizer([str(REPO / "data/raw/pretrain.txt")], 600, folder / "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model_dir = folder / "model"
    LlamaForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return str(model_dir)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serving(model_dir: str, log_path: Path, continuous_batching: bool = False, startup_s: float = 180):
    """`transformers serve --device cpu` on a free port of 127.0.0.1; yields the base URL (…/v1).
    The server is stopped (terminate, then kill) when the block ends, whatever happens in it."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "transformers"), "serve", "--device", "cpu", "--host", "127.0.0.1",
               "--port", str(port), *(["--continuous-batching"] if continuous_batching else []),
               model_dir]
    # One thread: a 0.1M-parameter model gains nothing from more, and on shared cores OpenMP threads
    # that spin-wait for each other make every request many times slower.
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log_path, "w", encoding="utf-8") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
        try:
            deadline = time.monotonic() + startup_s
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"transformers serve did not start:\n{Path(log_path).read_text()[-2000:]}")
                    time.sleep(0.5)
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)  # uvicorn may wait on its background tasks: then kill
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
