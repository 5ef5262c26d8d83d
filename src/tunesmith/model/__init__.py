"""Models and their text: loading a base with a stage's adapter chain, the quantisation guard, the
prompt template every stage shares, the adapter folder layout, and the embedded tiny base model.

Modules: model, template, adapters, base_model."""
