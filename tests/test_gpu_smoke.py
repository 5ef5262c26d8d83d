"""The GPU acceptance run's CPU dry run: the same flow (SFT, DPO on the stacked SFT adapter, nf4 loading and
generation of every stage), so the script cannot rot between the sessions that have a GPU."""

import re
import subprocess
import sys

from conftest import REPO


def test_gpu_smoke_dry_cpu_runs_the_whole_flow_and_passes_its_checks():
    result = subprocess.run([sys.executable, str(REPO / "bench/gpu_smoke.py"), "--dry-cpu"], capture_output=True,
                            text=True, timeout=900, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("RESULT gpu_smoke ")]
    figures = dict(part.split("=") for part in line.split()[2:])
    assert figures["mode"] == "dry-cpu" and float(figures["effect_kept"]) >= 0.9
    assert float(figures["sft_tokens_per_s"]) > 0 and float(figures["dpo_pairs_per_s"]) > 0
    assert float(figures["onpolicy_answers_per_s"]) > 0 and "on-policy pairs: 6 SFT prompts x 3 sampled" in result.stdout
    # DPO at the recipe's learning rate (5e-6) moves every lora_A entry of an fp32 adapter.
    assert float(figures["lora_a_moved"]) >= 0.99
    assert "DPO at lr 5e-06:" in result.stdout and "trainable parameters: float32)" in result.stdout
    changed = re.search(r"base→sft (\d+), sft→dpo (\d+)", result.stdout)
    assert changed and int(changed.group(1)) > 0
    for stage in ("sft", "dpo", "generate base", "generate sft", "generate dpo"):
        assert f"| {stage} " in result.stdout
    if (REPO.parent / "shared/llm-jp-3-tokenizer").is_dir():
        assert "tokenizer llm-jp-3;" in result.stdout


def test_gpu_smoke_refuses_13b_on_cpu():
    result = subprocess.run([sys.executable, str(REPO / "bench/gpu_smoke.py"), "--dry-cpu", "--size", "13b"],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 2 and "--size 13b needs a CUDA GPU" in result.stderr


def test_fill_rows_makes_every_row_reach_max_length(tmp_path, tiny_tokenizer):
    """--size 13b trains on rows filled past max_length: every batch is then max_length long."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sys.path.insert(0, str(REPO / "bench"))
    from gpu_smoke import fill_rows

    path = tmp_path / "preference.parquet"
    pq.write_table(pa.table({"prompt": ["首都は？", "色は？"], "chosen": ["東京", ""], "rejected": ["大阪です", None],
                             "split": ["train", "train"]}), path)
    fill_rows(path, tiny_tokenizer, 64)
    table = pq.read_table(path)
    assert table.column("prompt").to_pylist() == ["首都は？", "色は？"]
    for field in ("chosen", "rejected"):
        for text in table.column(field).to_pylist():
            assert len(tiny_tokenizer(text, add_special_tokens=False)["input_ids"]) > 64
    assert table.column("chosen").to_pylist()[0].startswith("東京\n東京")
