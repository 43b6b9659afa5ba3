"""What the retraining notebook calls around the training steps (``training.notebook``): its
parameters checked, the project's folder as the working folder under Jupyter, an ingested
folder read with the notebook's words, and the quality table `funnelcast train` prints."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.errors import InputError
from training.evaluation import buyers_line, quality_rows
from training.notebook import (
    PROJECT,
    check_before_run,
    check_parameters,
    notebook_errors,
    notebook_words,
    project_store,
    quality_table,
    read_data_folder,
    training_setup,
)

DEFAULTS: dict[str, Any] = {
    "events": "",
    "source": "",
    "model_name": "",
    "observe_until": "",
    "contacts": 8000,
    "days": 120,
    "config": "",
    "spec": "",
    "horizon_days": 0,
    "tune_trials": 0,
    "tracking_uri": "",
    "promote_if_better": True,
    "force_promotion": False,
    "assume_consent": False,
}


def test_the_notebooks_own_defaults_pass() -> None:
    check_parameters(DEFAULTS)
    check_parameters(DEFAULTS | {"tune_trials": 5, "assume_consent": True, "events": "out/x"})


@pytest.mark.parametrize("name", ["promote_if_better", "force_promotion", "assume_consent"])
@pytest.mark.parametrize("given", ["false", "False", "no", 0, 1, None])
def test_a_flag_given_as_text_or_a_number_is_refused_naming_it(name: str, given: Any) -> None:
    """papermill's `-p force_promotion false` is the text 'false', which Python takes as
    true: a worse model was forced to champion, and a run meant to stop without consent
    trained on everybody (notebook review)."""
    with pytest.raises(InputError, match=rf"parameter {name} is .*not True or False.*{name} False"):
        check_parameters(DEFAULTS | {name: given})


@pytest.mark.parametrize(
    ("name", "given"),
    [
        ("contacts", 0),
        ("days", "120"),
        ("tune_trials", -1),
        ("tune_trials", 2.5),
        ("days", True),
        ("horizon_days", -1),
        ("horizon_days", "30"),
    ],
)
def test_a_count_that_is_no_whole_number_in_range_is_refused(name: str, given: Any) -> None:
    with pytest.raises(InputError, match=rf"parameter {name} is .*whole number"):
        check_parameters(DEFAULTS | {name: given})


def test_text_papermill_read_as_a_number_is_refused_with_the_raw_flag() -> None:
    with pytest.raises(InputError, match=r"parameter model_name is 2024, not text.*-r model_name"):
        check_parameters(DEFAULTS | {"model_name": 2024})
    with pytest.raises(InputError, match=r"parameter source is \['olist'\], not text; give"):
        check_parameters(DEFAULTS | {"source": ["olist"]})


def test_none_for_text_is_the_default_and_a_path_is_taken_for_events() -> None:
    """`-p tracking_uri None` meant the default store before the check (diff review)."""
    check_parameters(DEFAULTS | {"tracking_uri": None, "source": None, "observe_until": None})
    check_parameters(DEFAULTS | {"events": Path("out/run/data")})
    check_parameters(DEFAULTS | {"config": Path("my.yaml"), "spec": Path("spec.yaml")})
    with pytest.raises(InputError, match="parameter model_name is PosixPath"):
        check_parameters(DEFAULTS | {"model_name": Path("x")})


def test_jupyters_start_in_the_notebooks_folder_uses_the_projects_store(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Started in notebooks/ (Jupyter, VS Code), the default store mlruns/ was a second one
    beside the notebook, and the champion promoted there one `serve` never saw. The working
    folder is kept: a path the user writes is the notebook folder's (diff review: a move to
    the project read '../store' one folder too high)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    notebooks = PROJECT / "notebooks"
    assert project_store("", notebooks) == f"sqlite:///{PROJECT}/mlruns/mlflow.db"
    assert project_store(None, notebooks) == f"sqlite:///{PROJECT}/mlruns/mlflow.db"
    # a store named is used as named; run from elsewhere, the default is the folder's
    assert project_store("sqlite:///../store/mlflow.db", notebooks) is None
    assert project_store("", tmp_path) is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/m.db")
    assert project_store("", notebooks) is None
    monkeypatch.chdir(notebooks)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert project_store("") == f"sqlite:///{PROJECT}/mlruns/mlflow.db"  # the kernel's folder
    assert Path.cwd() == notebooks  # not moved


def _write(path: Path) -> None:
    pq.write_table(pa.table({"x": [1]}), path)


def test_an_ingested_folder_is_read_with_its_contacts_and_labels(tmp_path: Path) -> None:
    _write(tmp_path / "events.parquet")
    _write(tmp_path / "contacts.parquet")
    events, contacts, labels = read_data_folder(str(tmp_path))
    assert events.num_rows == 1
    assert contacts is not None
    assert labels is None
    _write(tmp_path / "labels.parquet")
    # the events file named instead of its folder: the folder is read
    _, _, labels = read_data_folder(str(tmp_path / "events.parquet"))
    assert labels is not None


def test_a_folder_of_part_files_points_to_funnelcast_train(tmp_path: Path) -> None:
    _write(tmp_path / "part-0.parquet")
    with pytest.raises(InputError, match=r"events\.parquet is missing.*funnelcast train --events"):
        read_data_folder(str(tmp_path))
    (tmp_path / "part-0.parquet").unlink()
    (tmp_path / "events.parquet").mkdir()  # Spark's output: a folder of that name
    with pytest.raises(InputError, match=r"events\.parquet is a folder.*funnelcast train"):
        read_data_folder(str(tmp_path))


def test_a_missing_folder_says_where_relative_paths_start(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no such folder \(relative to .*leave events empty"):
        read_data_folder(str(tmp_path / "nowhere"))
    _write(tmp_path / "other.parquet")
    with pytest.raises(InputError, match=r"is a file; give the folder"):
        read_data_folder(str(tmp_path / "other.parquet"))


def test_the_quality_table_has_the_rows_train_prints() -> None:
    """The notebook showed macro-F1 over every stage alone, which counts a stage the labels
    never hold as an F1 of 0 for the rules: on Olist it read +24 points where the labels'
    stages gave +8.8, and on Taobao behind the rules where the gate judged it ahead."""
    metrics = {
        "test.stage.rules.macro_f1": 0.30,
        "test.stage.lightgbm.macro_f1": 0.55,
        "test.stage.rules.macro_f1_labelled": 0.46,
        "test.stage.lightgbm.macro_f1_labelled": 0.55,
        "test.stage.rules.accuracy": 0.84,
        "test.stage.lightgbm.accuracy": 0.98,
        "test.propensity.rfm_logistic.auc_roc": 0.7,
        "test.propensity.lightgbm.auc_roc": 0.8,
        "test.propensity.lightgbm.positives": 1234.0,
    }
    table = quality_table(metrics)
    assert table["test window"].to_list() == [row.label for row in quality_rows(metrics)]
    labelled = table.filter(table["test window"] == "  over the labels' stages").row(0)
    assert labelled == ("  over the labels' stages", 0.46, None, 0.55)
    accuracy = table.filter(table["test window"] == "stage accuracy").row(0)
    assert accuracy == ("stage accuracy", 0.84, None, 0.98)
    roc = table.filter(table["test window"] == "purchase AUC-ROC").row(0)
    assert roc == ("purchase AUC-ROC", None, 0.7, 0.8)
    ece = table.filter(table["test window"] == "purchase ECE (calibration)").row(0)
    assert ece == ("purchase ECE (calibration)", None, None, None)  # not in the metrics
    assert buyers_line(metrics) == "1,234 buyers in the test window."
    assert buyers_line({}) == ""


def test_the_notebooks_first_cells_take_the_projects_store_under_jupyter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The parameters cell and the set-up cell, run as Jupyter runs them (in notebooks/, no
    store named): the store the later cells train into is the project's."""
    import nbformat

    notebook = nbformat.read(PROJECT / "notebooks" / "retrain.ipynb", as_version=4)
    parameters, setup = [c for c in notebook.cells if c.cell_type == "code"][:2]
    assert "parameters" in parameters.metadata.get("tags", [])
    monkeypatch.chdir(PROJECT / "notebooks")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    namespace: dict[str, Any] = {}
    exec(parameters.source, namespace)  # the project's own notebook, as Jupyter runs it
    exec(setup.source, namespace)
    assert namespace["tracking_uri"] == f"sqlite:///{PROJECT}/mlruns/mlflow.db"
    namespace["force_promotion"] = "false"  # as papermill passes `-p force_promotion false`
    with pytest.raises(InputError, match="parameter force_promotion is 'false'"):
        exec(setup.source, namespace)


def _parameters_cell() -> dict[str, Any]:
    """The notebook's own parameters, as its parameters cell sets them."""
    import nbformat

    notebook = nbformat.read(PROJECT / "notebooks" / "retrain.ipynb", as_version=4)
    namespace: dict[str, Any] = {}
    exec(notebook.cells[1].source, namespace)  # the project's own parameters cell
    return {k: v for k, v in namespace.items() if not k.startswith("__")}


def test_the_tests_defaults_are_the_notebooks_parameters() -> None:
    """Every parameter the notebook has is checked (a missing one is a KeyError here)."""
    assert _parameters_cell() == DEFAULTS


def _config(tmp_path: Path, **training: Any) -> Path:
    """A copy of the shipped settings with ``training`` over its `training:` section."""
    import yaml

    settings = yaml.safe_load((PROJECT / "features" / "config" / "default.yaml").read_text())
    settings["training"].update(training)
    path = tmp_path / "my-settings.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def test_the_settings_are_the_shipped_ones_without_parameters() -> None:
    setup = training_setup()
    assert (setup.settings.horizon_days, setup.settings.registry.model_name) == (14, "funnelcast")
    assert setup.config is None
    assert setup.said == ["training settings: the shipped ones"]


def test_a_config_gives_the_settings_and_the_horizon_goes_over_it(tmp_path: Path) -> None:
    """`config`, `horizon_days` and `model_name`, as `funnelcast train --config --horizon
    --model-name` take them (the notebook had neither a settings file nor a horizon)."""
    config = _config(tmp_path, horizon_days=30, snapshots=9)
    setup = training_setup(config=str(config))
    assert (setup.settings.horizon_days, setup.settings.snapshots) == (30, 9)
    assert setup.config == config
    setup = training_setup(config=config, horizon_days=7, model_name="mine")
    assert (setup.settings.horizon_days, setup.settings.snapshots) == (7, 9)
    assert setup.settings.registry.model_name == "mine"
    assert setup.said == [
        f"training settings: those of {config}, with {{'model_name': 'mine', 'horizon_days': 7}}"
    ]


def test_a_source_mapping_gives_its_settings_unless_a_config_gives_them(tmp_path: Path) -> None:
    """As `funnelcast train --source`: the mapping's `training:` over the shipped settings;
    with a config, the config's whole, and the notebook says what the mapping's were."""
    mapped = training_setup(source="cdnow_sample", events="ingested")
    assert (mapped.settings.horizon_days, mapped.settings.snapshot_every_days) == (90, 30)
    assert mapped.settings.registry.model_name == "funnelcast-cdnow_sample"
    config = _config(tmp_path, horizon_days=21)
    setup = training_setup(source="cdnow_sample", config=config, events="ingested")
    assert (setup.settings.horizon_days, setup.settings.snapshot_every_days) == (21, 7)
    assert setup.settings.registry.model_name == "funnelcast"
    assert setup.said[0].startswith(
        "The cdnow_sample mapping's training settings are not used: config gives them; to use "
        "them, copy its horizon_days"
    )
    assert "model_name='funnelcast-cdnow_sample'" in setup.said[0]
    named = training_setup(
        source="cdnow_sample", config=config, model_name="mine", events="ingested"
    )
    assert named.settings.registry.model_name == "mine"
    assert "model_name=" not in named.said[0]  # given: nothing to say of the mapping's name


def test_a_feature_spec_is_read_and_logged_as_given(tmp_path: Path) -> None:
    """`spec`, as `funnelcast train --spec`: the model logs the user's YAML text."""
    shipped = (PROJECT / "features" / "config" / "feature_spec.yaml").read_text("utf-8")
    spec = tmp_path / "spec.yaml"
    spec.write_text(shipped.replace("windows: [7, 28, 90]\n", "windows: [7, 28, 60, 90]\n", 1))
    assert spec.read_text("utf-8") != shipped
    setup = training_setup(spec=spec)
    assert setup.spec_text == spec.read_text("utf-8")
    assert "email_click_count_60d" in setup.spec.names, setup.spec.names[:5]
    assert training_setup().spec_text == shipped


@pytest.mark.parametrize("name", ["config", "spec"])
def test_a_file_parameter_that_is_no_file_names_it_and_where_it_was_looked_for(
    name: str, tmp_path: Path
) -> None:
    with pytest.raises(InputError, match=rf"{name}='nothere.yaml': no such file \(relative to "):
        training_setup(**{name: "nothere.yaml"})
    with pytest.raises(InputError, match=rf"{name}='{tmp_path}': a folder"):
        training_setup(**{name: str(tmp_path)})


def test_settings_training_would_refuse_are_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="horizon_days"):
        training_setup(config=_config(tmp_path, horizon_days=0))
    import yaml

    settings = yaml.safe_load(_config(tmp_path).read_text())
    settings["training"]["lightgbm"]["params"]["seed"] = 3  # set by funnelcast itself
    (tmp_path / "seeded.yaml").write_text(yaml.safe_dump(settings))
    with pytest.raises(InputError, match="set by funnelcast itself"):
        training_setup(config=tmp_path / "seeded.yaml")
    spec = tmp_path / "spec.yaml"
    shipped = (PROJECT / "features" / "config" / "feature_spec.yaml").read_text("utf-8")
    spec.write_text(shipped.replace("rules_stage: true", "rules_stage: false"))
    with pytest.raises(InputError, match="rules_stage: true"):
        training_setup(spec=spec)


def test_a_source_without_its_events_is_refused_before_any_work() -> None:
    """`-p source completejourney` without events simulated, trained with the mapping's
    settings and registered (and promoted) the simulation as funnelcast-completejourney
    (notebook review)."""
    with pytest.raises(
        InputError,
        match=r"source='completejourney' names the source the events were ingested from, but "
        r"events is empty, so the notebook would train on a simulation and register it as "
        r"completejourney's model; give events the folder `funnelcast ingest --source "
        r"completejourney --out DIR` wrote",
    ):
        training_setup(source="completejourney")
    assert training_setup(source="completejourney", events="ingested").settings.registry


def test_messages_name_the_notebooks_parameters_not_the_commands_options(tmp_path: Path) -> None:
    """Training's errors name `funnelcast train`'s options (--force, --spec, --assume-consent,
    ...), which the notebook does not have (notebook review)."""
    from features.spec import load_feature_spec
    from training.pipeline import require_known_consent, require_no_identifying_attributes

    said = []
    for failing in (
        lambda: require_known_consent(None),
        lambda: require_no_identifying_attributes(
            pa.table({"contact_id": ["a", "b"], "email": ["a@x.se", "b@x.se"]}),
            load_feature_spec(),
        ),
    ):
        with pytest.raises(InputError) as caught:
            failing()
        said.append(notebook_words(str(caught.value)))
    assert "(contacts.parquet in the events folder), or pass assume_consent = True if" in said[0]
    assert "(features/config/feature_spec.yaml, given with spec)" in said[1]
    assert not [text for text in said if "--" in text]
    assert notebook_words(
        "a shorter horizon (`horizon_days:`, or `train --horizon`) under `training:` in your "
        "--config; register it under its own name (--model-name); or use --force to replace "
        "the champion; or train before them with --observe-until (observe_until); --forced"
    ) == (
        "a shorter horizon (the horizon_days parameter, or `horizon_days:`) under `training:` "
        "in your config; register it under its own name (model_name); or use force_promotion "
        "= True to replace the champion; or train before them with the observe_until "
        "parameter; --forced"
    )
    assert notebook_words("the labels table is empty; give labelled contacts or drop --labels") == (
        "the labels table is empty; give labelled contacts or remove labels.parquet from the "
        "events folder"
    )
    # a command to run in a shell keeps its options (review: "`funnelcast ingest source olist`")
    assert (
        notebook_words(
            "give events the folder `funnelcast ingest --source olist --out DIR` wrote, or --source"
        )
        == "give events the folder `funnelcast ingest --source olist --out DIR` wrote, or source"
    )


def test_notebook_errors_reword_the_error_and_list_what_too_little_data_is() -> None:
    """The same exception, in the notebook's words; too little data shows the report the
    command prints (the message said the snapshots that fit were listed below, and nothing
    was)."""
    from training.pipeline import InsufficientDataError

    report = {
        "snapshots": ["2026-01-05", "2026-01-12"],
        "train": {"rows": 1200, "positives": 3, "stages": {"intent": 40, "dormant": 1160}},
        "minimums": {"snapshots": 9},
    }
    raised = InsufficientDataError("too little data: raise `snapshots:` in your --config", report)
    with pytest.raises(InsufficientDataError) as caught, notebook_errors():
        raise raised
    assert caught.value is raised
    assert str(caught.value).splitlines() == [
        "too little data: raise `snapshots:` in your config",
        "Snapshots that fit the data: 2026-01-05, 2026-01-12.",
        "train: 1,200 rows, 3 buyers; stages: intent 40, dormant 1,160",
        "Minimums: snapshots 9 (an out-of-time split with this horizon).",
    ]
    with pytest.raises(ValueError, match=r"^--force$"), notebook_errors():  # not one of ours
        raise ValueError("--force")


def test_checks_before_a_run_refuse_what_train_refuses_before_it_starts(tmp_path: Path) -> None:
    """An identifying contacts column and a store that cannot be written were found inside
    the notebook's run, which stayed FAILED in the store (notebook review)."""
    from features.spec import load_feature_spec

    spec = load_feature_spec()
    store = f"sqlite:///{tmp_path}/store/mlflow.db"
    contacts = pa.table({"contact_id": ["a"], "marketing_consent": [True]})
    check_before_run(contacts, spec, store)
    assert (tmp_path / "store").is_dir()  # made, as `train` makes it; no database yet
    assert not (tmp_path / "store" / "mlflow.db").exists()
    with pytest.raises(InputError, match="no contacts table"):
        check_before_run(None, spec, store)
    check_before_run(None, spec, store, assume_consent=True)
    emails = contacts.append_column("email", pa.array(["a@x.se"]))
    with pytest.raises(InputError, match=r"contacts column 'email' \(.*\) identifies contacts"):
        check_before_run(emails, spec, store)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(InputError, match="a-file"):
        check_before_run(contacts, spec, f"sqlite:///{blocker}/mlflow.db")


def test_the_notebook_sets_how_openmp_threads_wait_before_openmp_loads() -> None:
    """LightGBM's threads spun while waiting in the notebook, 3-5x slower training than
    `funnelcast train` on this 2-core machine (notebook review). The notebook imports
    training.notebook first; importing it sets the policy and loads no OpenMP, which reads it
    once, as it loads."""
    import subprocess
    import sys

    import nbformat

    notebook = nbformat.read(PROJECT / "notebooks" / "retrain.ipynb", as_version=4)
    code = [c.source for c in notebook.cells if c.cell_type == "code"][1]
    first = next(line for line in code.splitlines() if line.startswith(("import", "from")))
    assert first.startswith("from training.notebook import")
    probe = (
        "import os, training.notebook\n"
        "maps = open('/proc/self/maps').read()\n"
        "print(os.environ.get('OMP_WAIT_POLICY'), 'libgomp' in maps)\n"
        "import training.evaluation\n"
        "print('libgomp' in open('/proc/self/maps').read())"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    shown = subprocess.run(
        [sys.executable, "-c", probe], cwd=PROJECT, env=env, capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split() == ["PASSIVE", "False", "True"]  # set, then OpenMP loaded
