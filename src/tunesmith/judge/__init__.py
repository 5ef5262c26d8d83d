"""Grading answers with an LLM judge: the rubric template, the backends (an OpenAI-compatible
endpoint or a local model through generation), the grade cache and the judge's statistics.

Modules: judge, judge_backends, judge_cache, judge_stats, rubric."""
