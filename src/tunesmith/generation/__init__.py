"""A stage's answers to the tasks: batched generation (transformers or vLLM), the guards
that flag an answer, retries, and the submission file written and validated.

Modules: generate, guards, submission."""
