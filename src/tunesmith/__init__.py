"""tunesmith: a declarative build system for fine-tuning language models for leaderboard tasks."""

__version__ = "0.1.0"
