"""Training keys carry trl's and peft's names; the old names are errors naming the new key; a section's `trainer:`
mapping passes any other field of the stage's trl config through, checked before any job."""

import dataclasses
import importlib
import warnings

import pytest

from conftest import REPO
from stage_keys import downstream_of
from tunesmith.config import plan
from tunesmith.config.recipe import RecipeError, load_recipe, read_recipe, validate_recipe
from tunesmith.config.trl_fields import RENAMED, REMOVED_SECTIONS, SET_BY_TUNESMITH, config_class, config_fields

DEFAULT = REPO / "recipes" / "default.yaml"


def raw():
    return read_recipe(DEFAULT)


def refused(recipe) -> str:
    with pytest.raises(RecipeError) as caught:
        validate_recipe(recipe)
    return str(caught.value)


def put(recipe: dict, dotted: str, value) -> dict:
    *parents, last = dotted.split(".")
    node = recipe
    for name in parents:
        node = node.setdefault(name, {})
    node[last] = value
    return recipe


@pytest.mark.parametrize("old", sorted(RENAMED))
def test_an_old_key_is_an_error_naming_trls_name(old):
    recipe = raw()
    value = 1  # any value: the name alone is refused
    message = refused(put(recipe, old, value))
    assert f"{old}: renamed to {RENAMED[old]}" in message, message
    assert "unknown key" not in message, "said once, as a rename"


@pytest.mark.parametrize("section", sorted(REMOVED_SECTIONS))
def test_a_removed_section_names_the_keys_that_replace_it(section):
    message = refused(put(raw(), section, {}))
    assert f"{section}: this section is gone; its keys are {REMOVED_SECTIONS[section]}" in message


def test_an_old_key_given_as_an_override_is_refused_the_same_way():
    with pytest.raises(RecipeError, match=r"sft\.epochs: renamed to sft\.num_train_epochs"):
        load_recipe(DEFAULT, overrides={"sft.epochs": 3})


def test_a_sweep_over_an_old_key_names_the_new_one():
    recipe = put(raw(), "sweep", {"matrix": {"dpo.lora.alpha": [8, 16]}})
    assert "sweep.matrix.dpo.lora.alpha: 'alpha' is not a key of 'dpo.lora' (renamed to dpo.lora.lora_alpha" \
        in refused(recipe)


def test_the_new_names_are_trls_and_pefts_fields():
    """Each renamed key's new name is a field of the trl config (or peft's LoraConfig) it reaches."""
    from peft import LoraConfig

    sft_fields, lora_fields = config_fields(config_class("sft")), config_fields(LoraConfig)
    for old, new in RENAMED.items():
        name = new.rsplit(".", 1)[1]
        if ".lora." in new:
            assert name in lora_fields, new
        elif new.startswith("dpo."):
            assert any(name in config_fields(config_class("dpo", method))
                       for method in ("dpo", "orpo", "simpo", "kto")), new
        else:
            assert name in sft_fields, new


@pytest.mark.parametrize("section, field, value", [
    ("sft", "neftune_noise_alpha", 5.0), ("sft", "optim", "adamw_torch"),
    ("sft", "lr_scheduler_kwargs", {"num_cycles": 1}), ("dpo", "label_smoothing", 0.1),
    ("continued_pretraining", "weight_decay", 0.01)])
def test_a_trainer_field_is_accepted_and_is_part_of_the_stages_key(section, field, value):
    before = validate_recipe(raw())
    recipe = validate_recipe(put(raw(), f"{section}.trainer.{field}", value))
    assert recipe[section]["trainer"] == {field: value}
    old, new = plan.steps(before), plan.steps(recipe)
    stage = {"continued_pretraining": "cpt"}.get(section, section)
    if stage in old:
        changed = {name for name in old if old[name].key != new[name].key}
        assert changed == downstream_of(old, {stage}) & old.keys(), sorted(changed)
        assert new[stage].settings[section]["trainer"] == {field: value}


@pytest.mark.parametrize("section, field, close", [
    ("sft", "neftune_noise_alfa", "neftune_noise_alpha"), ("dpo", "optimm", "optim"),
    ("continued_pretraining", "weight_decai", "weight_decay")])
def test_an_unknown_trainer_field_is_an_error_with_the_closest_field(section, field, close):
    message = refused(put(raw(), f"{section}.trainer.{field}", 1))
    assert f"{section}.trainer.{field}: not a field of trl's" in message
    assert f"did you mean {close!r}?" in message, message


def test_the_preference_trainer_is_checked_against_the_config_of_dpo_method():
    """label_smoothing is a DPOConfig field, not an ORPOConfig one: the method decides."""
    assert validate_recipe(put(raw(), "dpo.trainer.label_smoothing", 0.1))
    recipe = put(put(raw(), "dpo.trainer.label_smoothing", 0.1), "dpo.method", "orpo")
    assert "dpo.trainer.label_smoothing: not a field of trl's ORPOConfig" in refused(recipe)


@pytest.mark.parametrize("section, field, instead", [
    ("sft", "num_train_epochs", "use sft.num_train_epochs instead"),
    ("sft", "per_device_train_batch_size", "use sft.per_device_train_batch_size instead"),
    ("dpo", "beta", "use dpo.beta instead"), ("dpo", "report_to", "use tracking.report_to instead"),
    ("sft", "seed", "use seed instead"), ("dpo", "deepspeed", "use distributed.strategy instead"),
    ("sft", "output_dir", "the stage's folder is tunesmith's"),
    ("continued_pretraining", "eval_strategy", "continued_pretraining has no key for it")])
def test_a_trainer_field_tunesmith_sets_is_refused_naming_the_key_to_use(section, field, instead):
    message = refused(put(raw(), f"{section}.trainer.{field}", 1))
    assert f"{section}.trainer.{field}: tunesmith sets trl's {field} itself; {instead}" in message, message


def _recorded_configs(monkeypatch, names):
    """Replace trl's config classes by recorders of the arguments they are built with."""
    built = {}
    for dotted in names:
        module_name, _, name = dotted.rpartition(".")
        module = importlib.import_module(module_name)
        original = getattr(module, name)

        def record(*args, __name=name, __original=original, **kwargs):
            built[__name] = kwargs
            return __original(*args, **kwargs)

        monkeypatch.setattr(module, name, record)
    return built


def test_set_by_tunesmith_holds_every_field_the_trainers_set(monkeypatch, tmp_path):
    """Each trl config argument tunesmith's code passes is in SET_BY_TUNESMITH (so a `trainer:` entry can never
    collide with it unnoticed), and what `trainer:` holds reaches the config."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import trl.experimental.cpo  # noqa: F401
        import trl.experimental.orpo  # noqa: F401
    from tunesmith.training import preference
    from tunesmith.training.train import _common_args, cpt_arguments, sft_arguments

    recipe = validate_recipe(put(put(raw(), "sft.trainer.neftune_noise_alpha", 5.0), "dpo.trainer.optim",
                                 "adamw_torch"))
    reporting = {"report_to": ["tensorboard"], "run_name": "run", "project": "p"}
    passed = {}
    sft = recipe["sft"] | {"packing": True}
    arguments = sft_arguments(sft, _common_args(sft, 1, str(tmp_path), reporting, evaluate=True))
    assert arguments["neftune_noise_alpha"] == 5.0
    passed["SFTConfig"] = set(arguments) - set(sft["trainer"])
    cpt = recipe["continued_pretraining"] | {"trainer": {"weight_decay": 0.01}}
    arguments = cpt_arguments(cpt, _common_args(cpt, 1, str(tmp_path), reporting))
    assert arguments["weight_decay"] == 0.01
    passed["SFTConfig of continued pretraining"] = set(arguments) - {"weight_decay"}
    built = _recorded_configs(monkeypatch, ["trl.DPOConfig", "trl.KTOConfig", "trl.experimental.cpo.CPOConfig",
                                            "trl.experimental.orpo.ORPOConfig"])
    for method in ("dpo", "kto", "simpo", "orpo"):
        dpo = recipe["dpo"] | {"method": method}
        _, config = preference.trainer_class_and_config(dpo, _common_args(dpo, 1, str(tmp_path), reporting,
                                                                          evaluate=True))
        assert config.optim == "adamw_torch", method
    for name, kwargs in built.items():
        passed[name] = set(kwargs) - {"optim"}
    assert len(passed) == 6
    for name, fields in passed.items():
        assert fields - set(SET_BY_TUNESMITH) == set(), name


def test_set_by_tunesmith_names_real_recipe_keys():
    recipe = load_recipe(DEFAULT)
    for field, setter in SET_BY_TUNESMITH.items():
        if setter.startswith("none: "):
            continue
        key = setter.split()[0]
        for section in ("sft", "dpo") if key.startswith("*.") else (None,):
            node = recipe
            for part in key.replace("*", section or "").split("."):
                assert part in node, (field, setter)
                node = node[part]


def test_every_trainer_field_tunesmith_refuses_is_a_field_of_some_config():
    """A refusal of a name no config has would hide the clearer 'unknown field' error."""
    fields = set()
    for section, method in (("sft", None), ("dpo", "dpo"), ("dpo", "kto"), ("dpo", "orpo"), ("dpo", "simpo")):
        fields |= config_fields(config_class(section, method))
    assert set(SET_BY_TUNESMITH) - fields == set()
    assert all(dataclasses.is_dataclass(config_class(section)) for section in ("sft", "dpo"))
