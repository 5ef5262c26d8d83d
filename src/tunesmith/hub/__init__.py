"""Publishing and fetching through the Hugging Face Hub: named models' snapshots at a revision
(fetch: the one way a model from the hub enters a run), the staged model and dataset folders, their
cards and the push (hub), and a standalone model with the submitted adapter merged in (export). Highest
of the subpackages: it packages what the others produced.

Modules: fetch, hub, export."""
