"""Training settings are checked when they load, before any work: a review found a bad model
name, alias, seed or LightGBM parameter refused (or ignored) only after training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from features.errors import InputError
from training.settings import LightGBMSettings, for_training, load_training_settings


@pytest.mark.parametrize("name", ["team/a", "a:b", "o'brien", 'say "hi"', "..", "a/../b", " "])
def test_a_model_name_mlflow_cannot_register_or_search_is_refused(name: str) -> None:
    with pytest.raises(InputError, match="cannot name a registered model"):
        load_training_settings(model_name=name)


def test_a_usual_model_name_is_kept() -> None:
    assert load_training_settings(model_name="funnelcast-emea_2").registry.model_name == (
        "funnelcast-emea_2"
    )


@pytest.mark.parametrize(
    ("alias", "said"),
    [
        ("prod model", "letters, digits"),
        ("", "at least 1 character"),
        ("latest", "reserved"),
        ("LATEST", "reserved"),
        ("v1", "reserved"),
    ],
)
def test_an_alias_mlflow_refuses_is_refused_when_the_settings_load(alias: str, said: str) -> None:
    shipped = load_training_settings()
    with pytest.raises(InputError, match=said):
        load_training_settings(registry={**shipped.registry.model_dump(), "champion_alias": alias})


@pytest.mark.parametrize(
    ("resamples", "said"),
    [(-1, "greater than or equal to 0"), (50, "too few"), (99, "too few"), (100_001, "100000")],
)
def test_gate_resamples_out_of_range_are_refused_when_the_settings_load(
    resamples: int, said: str
) -> None:
    shipped = load_training_settings()
    with pytest.raises(InputError, match=said):
        load_training_settings(
            registry={**shipped.registry.model_dump(), "gate_resamples": resamples}
        )


def test_gate_resamples_of_0_is_the_strict_gate_and_a_file_without_it_has_the_default() -> None:
    shipped = load_training_settings()
    assert shipped.registry.gate_resamples == 500
    strict = {**shipped.registry.model_dump(), "gate_resamples": 0}
    assert load_training_settings(registry=strict).registry.gate_resamples == 0
    # a settings file copied before the setting existed still loads
    older = shipped.registry.model_dump(exclude={"gate_resamples"})
    assert load_training_settings(registry=older).registry.gate_resamples == 500


@pytest.mark.parametrize("seed", [-1, 2**31, 5_000_000_000])
def test_a_seed_outside_lightgbms_range_is_refused(seed: int) -> None:
    with pytest.raises(InputError, match="seed"):
        load_training_settings(seed=seed)


def _lightgbm(params: dict[str, Any]) -> LightGBMSettings:
    shipped = load_training_settings().lightgbm.model_dump()
    return LightGBMSettings.model_validate({**shipped, "params": params})


def test_a_misspelt_lightgbm_parameter_is_named_not_ignored() -> None:
    with pytest.raises(ValueError, match=r"\['learnig_rate'\] are no LightGBM parameters"):
        _lightgbm({"learnig_rate": 0.3})


@pytest.mark.parametrize(
    ("params", "said"),
    [
        ({"learning_rate": -0.1}, "learning_rate"),
        ({"num_leaves": 1}, "num_leaves"),
        ({"feature_fraction": 1.5}, "feature_fraction"),
    ],
)
def test_a_lightgbm_value_out_of_range_is_refused_with_lightgbms_check(
    params: dict[str, Any], said: str, capfd: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError, match=f"LightGBM refuses these values: Check failed: .*{said}"):
        _lightgbm(params)
    assert "[Fatal]" not in capfd.readouterr().err  # its own line is kept out of the output


@pytest.mark.parametrize(
    ("params", "said"),
    [
        ({"categorical_feature": "name:segment"}, "categorical features are the spec's"),
        ({"cat_feature": "0"}, "categorical features are the spec's"),
        ({"objective": "regression"}, "each model's objective is its own"),
        ({"loss": "huber"}, "each model's objective is its own"),
        ({"metric": "auc"}, "the validation metrics are the models' own"),
        ({"n_estimators": 50}, "rounds are `lightgbm.num_boost_round`"),
        ({"random_state": 3}, "the seed is `training.seed`"),
        ({"force_col_wise": True}, "training is deterministic and row-wise"),
        ({"verbose": 1}, "LightGBM's own output is kept quiet"),
    ],
)
def test_a_parameter_funnelcast_sets_itself_is_refused_naming_where_it_is_set(
    params: dict[str, Any], said: str
) -> None:
    """Given in `lightgbm.params`, these were overridden without a word, or (a categorical
    feature list) trained and then failed reading the model back (README review). Refused as
    training starts, not as the settings load: a command that only reads the model it trained
    must not stop on them (late review: a `verbose: -1` stopped the weekly `score`)."""
    name = next(iter(params))
    settings = load_training_settings()
    loaded = settings.model_copy(update={"lightgbm": _lightgbm({"learning_rate": 0.1, **params})})
    with pytest.raises(InputError, match=rf"\['{name}'\] are set by funnelcast itself: .*{said}"):
        for_training(loaded)


def test_lightgbm_aliases_and_the_shipped_parameters_are_accepted() -> None:
    # trained under LightGBM's main names: merged over the defaults' main names, an alias was
    # overridden by them (diff review: `eta: 0.3` trained at 0.05)
    settings = load_training_settings()
    given = _lightgbm({"eta": 0.1, "min_child_samples": 5, "n_jobs": 2})
    assert given.params == {"eta": 0.1, "min_child_samples": 5, "n_jobs": 2}  # as written
    trained = for_training(settings.model_copy(update={"lightgbm": given}))
    assert trained.lightgbm.params == {
        "learning_rate": 0.1,
        "min_data_in_leaf": 5,
        "num_threads": 2,
    }
    assert settings.lightgbm.params["learning_rate"] > 0
    twice = settings.model_copy(update={"lightgbm": _lightgbm({"learning_rate": 0.1, "eta": 0.2})})
    with pytest.raises(InputError, match="'learning_rate' and 'eta' are two names of"):
        for_training(twice)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"horizon_days": True}, "horizon_days: true is not a number"),
        ({"seed": False}, "seed: false is not a number"),
        ({"min_dormant_sample_rate": True}, "min_dormant_sample_rate: true"),
    ],
)
def test_a_boolean_is_no_number_setting(overrides: dict[str, Any], key: str) -> None:
    """YAML reads `yes`, `on` and `true` as booleans and pydantic took them as 1: a horizon of
    one day trained without a word."""
    with pytest.raises(InputError, match=key):
        load_training_settings(**overrides)


def test_a_boolean_in_a_nested_setting_is_named_by_its_path() -> None:
    shipped = load_training_settings().lightgbm.model_dump()
    with pytest.raises(InputError, match=r"lightgbm\.class_weight_power: true is not a number"):
        load_training_settings(lightgbm={**shipped, "class_weight_power": True})


def test_a_boolean_setting_still_takes_a_boolean() -> None:
    shipped = load_training_settings().lightgbm.model_dump()
    assert (
        load_training_settings(lightgbm={**shipped, "blend_rfm": False}).lightgbm.blend_rfm is False
    )


def test_a_boolean_among_a_mappings_numbers_is_refused(tmp_path: Path) -> None:
    """Diff review: `segments: {budget: yes}` loaded as a weight of 1.0."""
    import yaml

    from features.settings import load_defaults
    from features.simulator import load_simulator_settings

    settings = load_defaults()
    segments = settings["simulator"]["contacts"]["segments"]
    segments[next(iter(segments))] = True
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    with pytest.raises(InputError, match=r"contacts\.segments: a boolean is among its numbers"):
        load_simulator_settings(path)
