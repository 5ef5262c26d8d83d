"""A standalone merged model for users who upload a full model rather than an adapter: the submitted
stage's adapter merged into the base on CPU, unquantised (where a merge is exact), saved with a tokenizer
whose chat template renders exactly the training prompt, and a model card."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tunesmith.hub.hub import model_card
from tunesmith.jobs.atomic import atomic_path
from tunesmith.model.model import load_base, load_tokenizer, read_metadata, write_metadata


def chat_template(template_section: dict, tokenizer) -> str | None:
    """A Jinja chat template that renders exactly the text training saw, BOS included, for users of
    `apply_chat_template(tokenize=True)` (which adds no BOS of its own)."""
    if template_section["kind"] != "plain":
        return template_section.get("chat_template") or tokenizer.chat_template
    before, after = template_section["prompt"].split("{input}", 1)
    literal = lambda text: json.dumps(text, ensure_ascii=False)  # noqa: E731  (a Jinja string literal)
    return (
        "{{ bos_token }}{% for message in messages %}"
        f"{{% if message['role'] == 'user' %}}{{{{ {literal(before)} }}}}{{{{ message['content'] }}}}"
        f"{{{{ {literal(after)} }}}}"
        "{% elif message['role'] == 'assistant' %}{{ message['content'] }}{{ eos_token }}{% endif %}"
        "{% endfor %}"
    )


def export_merged(base_path: str, section: dict, adapter: str, out_dir: str, template_section: dict) -> None:
    """A standalone model folder (safetensors, tokenizer with a chat template that reproduces the
    training prompt, model card) with the stage's adapter merged in, for users who upload a full model.
    The base is loaded on the CPU, unquantised in the recipe's dtype, so the merge is exact and a 13B
    model never has to fit a GPU."""
    from peft import PeftModel

    unquantised = {**section, "quantization": "none"}
    model = load_base(base_path, unquantised, on=torch.device("cpu"))
    model = PeftModel.from_pretrained(model, adapter, torch_device="cpu").merge_and_unload()
    tokenizer = load_tokenizer(base_path, section)
    tokenizer.chat_template = chat_template(template_section, tokenizer)
    adapter_metadata = read_metadata(adapter)
    with atomic_path(out_dir, directory=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        chain = adapter_metadata.get("chain", [])
        card = model_card("export", chain[-1]["stage"] if chain else "export", {"base_model": section,
                          "template": template_section}, [], None, None, None, chain=chain)
        (Path(tmp) / "README.md").write_text(card, encoding="utf-8")
        write_metadata(tmp, stage="export", base_model=base_path, adapter=adapter, dtype=section["dtype"],
                       chain=chain, template_hash=adapter_metadata.get("template_hash"))
