"""The one prompt template, rendered the same way for SFT, DPO and generation.

Convention for special tokens: rendered text never contains BOS. The tokenizer adds it when the text
is encoded (`tok(text)`, as trl does for prompt/completion data and as generation does), so every
stage sees exactly one BOS. Chat templates that write `{{ bos_token }}` have it removed here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tunesmith.jobs.atomic import section_hash


class TemplateError(ValueError):
    """A template that cannot render a prompt consistently with its completion."""


@dataclass(frozen=True)
class PromptTemplate:
    section: dict  # the recipe's `template` section, defaults filled

    @property
    def hash(self) -> str:
        """Recorded in every adapter; generation refuses an adapter trained under another template.
        Only the keys that change the rendered text count."""
        return section_hash({key: self.section.get(key) for key in ("kind", "prompt", "system", "chat_template")})

    def _messages(self, user_text: str) -> list[dict]:
        system = self.section.get("system")
        messages = [{"role": "system", "content": system}] if system else []
        return messages + [{"role": "user", "content": user_text}]

    def _apply_chat(self, messages: list[dict], tokenizer, add_generation_prompt: bool) -> str:
        text = tokenizer.apply_chat_template(
            messages,
            chat_template=self.section.get("chat_template"),
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )
        bos = tokenizer.bos_token
        return text[len(bos) :] if bos and text.startswith(bos) else text

    def render_prompt(self, user_text: str, tokenizer) -> str:
        """The text the model is conditioned on, up to where its answer begins."""
        if self.section["kind"] == "plain":
            return self.section["prompt"].replace("{input}", user_text)
        return self._apply_chat(self._messages(user_text), tokenizer, add_generation_prompt=True)

    def render_completion(self, user_text: str, response: str, tokenizer) -> str:
        """The text that follows the prompt in training: the response (and the turn's closing tokens).

        trl appends EOS to completions that lack it, so EOS is left to trl in both template kinds.
        """
        if self.section["kind"] == "plain":
            return response
        prompt = self.render_prompt(user_text, tokenizer)
        messages = self._messages(user_text) + [{"role": "assistant", "content": response}]
        full = self._apply_chat(messages, tokenizer, add_generation_prompt=False)
        if not full.startswith(prompt):
            raise TemplateError(
                "the chat template renders the prompt differently alone and before an answer, so "
                "training and generation would see different text; fix the template or use kind: plain"
            )
        return full[len(prompt) :]

    def markers(self) -> list[str]:
        """Text that marks a template turn and must never be left inside an answer."""
        if self.section["stop_markers"]:
            return list(self.section["stop_markers"])
        if self.section["kind"] != "plain":
            return []
        lines = self.section["prompt"].splitlines()
        return [line.strip() for line in lines if line.strip() and "{input}" not in line]

    def clean_output(self, text: str) -> str:
        """Drop markers the model echoed before its answer, and everything from a marker after it. A
        marker counts only as a whole word, followed by a space, a line end or the end: an answer that
        begins with "### 回答例" keeps it."""
        text = text.strip()
        found = [re.compile(re.escape(marker) + r"(?=\s|$)") for marker in self.markers()]
        stripped = True
        while stripped:
            stripped = False
            for pattern in found:
                if match := pattern.match(text):
                    text = text[match.end() :].lstrip()
                    stripped = True
        cut = min((match.start() for pattern in found if (match := pattern.search(text))), default=len(text))
        return text[:cut].strip()
