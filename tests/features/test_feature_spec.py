"""The declarative feature spec: expansion, and errors that name the entry."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from features.spec import (
    MAX_EXPRESSION_DEPTH,
    SpecError,
    load_feature_spec,
    parse_feature_spec,
)

BASE = """
session_gap_minutes: 30
aggregates:
  - name: "{event_type}_count_{window}"
    kind: count
    for_each: {event_type: [email_open, email_click]}
    windows: [7, 28]
"""


def test_the_shipped_spec_expands_templates_into_named_features() -> None:
    spec = load_feature_spec()
    names = spec.names
    for expected in (
        "email_click_count_7d",
        "days_since_last_purchase",
        "open_without_click_ratio_28d",
        "purchase_value_sum_all",
        "web_share_28d",
    ):
        assert expected in names
    assert len(names) == len(set(names))
    assert spec.longest_window_days == 90


def test_a_feature_can_be_added_without_touching_python() -> None:
    spec = parse_feature_spec(
        BASE
        + """
derived:
  - name: email_click_per_open_{window}
    expr: "email_click_count_{window} / email_open_count_{window}"
    windows: [7, 28]
"""
    )
    assert spec.names[-2:] == ("email_click_per_open_7d", "email_click_per_open_28d")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("    where: {event_type: [teleport]}\n", "unknown event_type \\['teleport'\\]"),
        ("    colour: blue\n", "colour"),
    ],
)
def test_unknown_names_in_an_aggregate_are_errors_naming_them(extra: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_feature_spec(BASE + extra)


@pytest.mark.parametrize("window", ["forever", "true", "7.5", "0", "-3", "1000000"])
def test_a_window_that_is_not_a_whole_number_of_days_up_to_a_century_is_an_error(
    window: str,
) -> None:
    with pytest.raises(SpecError, match="window"):
        parse_feature_spec(BASE.replace("[7, 28]", f"[7, {window}]"))


@pytest.mark.parametrize(
    ("window", "says"),
    [
        ("0", "window 0 is not a positive number of days or all"),
        ("-7", "window -7 is not a positive number of days or all"),
        ("40000", "window 40000 is longer than 36,500 days; use `all` for all history"),
    ],
)
def test_a_derived_features_window_is_checked_as_an_aggregates_is(window: str, says: str) -> None:
    """A derived entry's windows were never checked (review): 0 was named as features no
    aggregate defines, -7 as an expression that does not parse. It is the aggregate's message
    now, also for an expression that does not use the window; a model trained on such a spec
    before still reads it back."""
    with pytest.raises(SpecError) as caught:
        parse_feature_spec(BASE.replace("[7, 28]", f"[7, {window}]"), origin="my.yaml")
    assert str(caught.value) == f"my.yaml: aggregate '{{event_type}}_count_{{window}}': {says}"
    ratio = f"""
derived:
  - name: "clicks_per_open_{{window}}"
    expr: "email_click_count_{{window}} / email_open_count_{{window}}"
    windows: [7, {window}]
"""
    with pytest.raises(SpecError) as caught:
        parse_feature_spec(BASE + ratio, origin="my.yaml")
    assert str(caught.value) == f"my.yaml: derived 'clicks_per_open_{{window}}': {says}"
    fixed = f"""
derived:
  - name: "click_share_{{window}}"
    expr: "email_click_count_7d / email_open_count_7d"
    windows: [{window}]
"""
    with pytest.raises(SpecError, match=re.escape(f"derived 'click_share_{{window}}': {says}")):
        parse_feature_spec(BASE + fixed)
    assert parse_feature_spec(BASE + fixed, logged=True).names[-1].startswith("click_share_")


def test_a_derived_feature_using_an_unknown_feature_is_an_error_naming_it() -> None:
    text = BASE + 'derived:\n  - name: x\n    expr: "email_open_count_7d / nope_7d"\n'
    with pytest.raises(SpecError, match="nope_7d"):
        parse_feature_spec(text)


@pytest.mark.parametrize("constant", ["1e400", "-1e400", "1" + "0" * 400])
def test_a_constant_beyond_any_number_is_an_error_not_a_column_of_nan(constant: str) -> None:
    text = BASE + f'derived:\n  - name: x\n    expr: "email_open_count_7d * {constant}"\n'
    with pytest.raises(SpecError, match="beyond the range of a number"):
        parse_feature_spec(text)


@pytest.mark.parametrize(
    ("expr", "says"),
    [
        ("__import__('os')", "only min() and max() may be called"),
        ("email_open_count_7d ** 2", "only + - * / are allowed"),
        ("abs(1, 2)", "only min() and max() may be called"),
        ("email_open_count_7d(1, 2)", "only min() and max() may be called"),
        ("min(email_open_count_7d, 1, key=email_open_count_7d)", "only min() and max()"),
        ("max(email_open_count_7d)", "take two or more arguments"),
        ("-email_open_count_7d + +email_open_count_7d", "only unary minus"),
        ("email_open_count_7d * 'a'", "only numbers may appear as constants"),
        # read as a feature named min, it crashed every engine after the build (Spark review)
        ("min - email_open_count_7d", "min in 'min - email_open_count_7d' is a function"),
        ("max(max, 1)", "max in 'max(max, 1)' is a function"),
    ],
)
def test_derived_expressions_allow_only_arithmetic(expr: str, says: str) -> None:
    text = BASE + f'derived:\n  - name: x\n    expr: "{expr}"\n'
    with pytest.raises(SpecError, match=re.escape(says)):
        parse_feature_spec(text)


def test_a_feature_declared_twice_is_an_error() -> None:
    twice = BASE + '  - name: "email_open_count_7d"\n    kind: count\n    windows: [7]\n'
    # two entries: both named, not the placeholder hint the name did not need (spec review)
    with pytest.raises(
        SpecError,
        match=re.escape(
            "feature 'email_open_count_7d' is made by aggregates[0] '{event_type}_count_{window}' "
            "and by aggregates[1] 'email_open_count_7d'; rename one"
        ),
    ):
        parse_feature_spec(twice)
    derived = BASE + 'derived:\n  - name: email_click_count_28d\n    expr: "email_open_count_7d"\n'
    with pytest.raises(SpecError, match=r"and by derived\[0\] 'email_click_count_28d'; rename"):
        parse_feature_spec(derived)
    # one entry making a name twice: the placeholders it lacks
    lacking = BASE.replace('"{event_type}_count_{window}"', '"{event_type}_count"')
    with pytest.raises(
        SpecError,
        match=r"feature 'email_open_count' is declared twice by aggregates\[0\] "
        r"'\{event_type\}_count' \(a name over several windows",
    ):
        parse_feature_spec(lacking)
    # a window listed twice is named as such (it read as a name lacking {window})
    with pytest.raises(
        SpecError,
        match=r"`aggregates\[0\].windows` \(in '\{event_type\}_count_\{window\}'\): "
        "window 7 is listed twice",
    ):
        parse_feature_spec(BASE.replace("windows: [7, 28]", "windows: [7, 28, 7]"))


def test_an_empty_list_of_windows_is_named_not_read_as_none() -> None:
    """`windows: []` made a derived entry one feature, as if no windows were given, and was
    taken on an aggregate of a kind without windows; each error says what to do for its
    kind. A spec a model was trained with keeps loading as it was trained."""
    derived = BASE + 'derived:\n  - name: x\n    expr: "email_open_count_7d"\n    windows: []\n'
    recency = BASE + "  - name: days_since_last_x\n    kind: days_since_last\n    windows: []\n"
    counts = BASE.replace("windows: [7, 28]", "windows: []")
    with pytest.raises(SpecError, match=re.escape("`windows: []` lists none")):
        parse_feature_spec(counts)  # "kind count needs `windows:`", which it had
    for text, says, name in (
        (derived, "derived 'x': `windows: []` lists no window; list the days (e.g. [7", "x"),
        (recency, "kind days_since_last looks at all history; remove", "days_since_last_x"),
    ):
        with pytest.raises(SpecError, match=re.escape(says)):
            parse_feature_spec(text)
        assert name in parse_feature_spec(text, logged=True).names  # loads as it was trained


@pytest.mark.parametrize("window", ["7d", '"7"', "7.5", "7.0", "true"])
def test_a_window_that_is_not_whole_days_is_named_with_its_entry(window: str) -> None:
    """'7d' is the likeliest slip (feature names read _7d): the error quotes the value and
    the entry's name, not pydantic's union members (int, literal['all'])."""
    with pytest.raises(SpecError) as caught:
        parse_feature_spec(BASE.replace("windows: [7, 28]", f"windows: [28, {window}]"))
    message = str(caught.value)
    assert "`aggregates[0].windows[1]` (in '{event_type}_count_{window}'): window " in message
    assert "is not whole days or `all`; write a number of days, e.g. 7" in message
    assert "literal" not in message
    assert "Value error" not in message


def test_an_unknown_key_is_named_with_the_keys_known_there() -> None:
    with pytest.raises(SpecError) as caught:
        parse_feature_spec(BASE.replace("windows:", "windwos:"), origin="my.yaml")
    assert str(caught.value) == (
        "my.yaml is invalid: `aggregates[0].windwos` (in '{event_type}_count_{window}'): Extra "
        "inputs are not permitted; the keys here are name, kind, column, for_each, where, "
        "where_not, windows"
    )


@pytest.mark.parametrize(
    "filters",
    [
        "where: {channel: [web], event_type: [purchase]}\n    for_each: {channel: [web, email]}",
        "where_not: {channel: [email]}\n    for_each: {channel: [web, email]}",
        "where_not: {event_type: [email_open]}",
    ],
)
def test_a_for_each_value_its_filter_leaves_out_is_refused(filters: str) -> None:
    """`email_buys_28d` of web purchases only was always 0: a slip, not a feature."""
    text = BASE.replace("windows: [7, 28]", "windows: [7, 28]\n    " + filters)
    if "for_each: {channel" in filters:
        text = text.replace("    for_each: {event_type: [email_open, email_click]}\n", "")
        text = text.replace("{event_type}_count", "{channel}_count")
    with pytest.raises(SpecError, match=r"names what its where/where_not filter leaves out"):
        parse_feature_spec(text)
    # the same filter over every value (`all`) makes such features too: refused, the values
    # named (it was taken without a word: spec review)
    wide = text.replace("[web, email]}", "all}").replace("[email_open, email_click]}", "all}")
    with pytest.raises(SpecError, match=r"all\} makes features for \[.*\], which its where/"):
        parse_feature_spec(wide)
    assert len(parse_feature_spec(wide, logged=True).names) > 4  # a logged one still loads
    # a model trained before the check was added keeps loading with the features it has
    logged = parse_feature_spec(text, logged=True)
    assert len(logged.names) == 4


def test_a_where_its_where_not_takes_whole_is_refused() -> None:
    """`where: [page_view]` with `where_not: [page_view]` made features always 0 (spec
    review)."""
    text = BASE.replace(
        "windows: [7, 28]",
        "windows: [7, 28]\n    where: {channel: [web]}\n    where_not: {channel: [web, email]}",
    )
    with pytest.raises(
        SpecError, match=r"its where and where_not both name every channel it keeps \(web\)"
    ):
        parse_feature_spec(text)
    assert parse_feature_spec(text, logged=True).names


def test_a_model_whose_logged_spec_predates_a_new_check_is_still_served() -> None:
    from types import SimpleNamespace

    from serving.runtime import check_feature_spec

    text = BASE.replace(
        "    for_each: {event_type: [email_open, email_click]}\n",
        "    for_each: {channel: [web, email]}\n    where: {channel: [web]}\n",
    ).replace("{event_type}_count", "{channel}_count")
    with pytest.raises(SpecError, match="filter leaves out"):
        parse_feature_spec(text)
    names = list(parse_feature_spec(text, logged=True).names)
    assert names == ["web_count_7d", "web_count_28d", "email_count_7d", "email_count_28d"]
    check_feature_spec(SimpleNamespace(spec_text=text, spec_features=[*names, "rules_stage"]))


def test_errors_found_while_expanding_and_yaml_errors_name_the_file() -> None:
    with pytest.raises(SpecError, match=r"^my.yaml: aggregate .*: window 0 is not a positive"):
        parse_feature_spec(BASE.replace("windows: [7, 28]", "windows: [0]"), origin="my.yaml")
    with pytest.raises(SpecError, match=r'in "my\.yaml", line') as caught:
        parse_feature_spec(BASE + "derived: [", origin="my.yaml")
    assert "<unicode string>" not in str(caught.value)


@pytest.mark.parametrize(
    "name",
    ["_packed0", "__any_event", "_run", "contact_id", "rules_stage", "purchased", "sample_weight"],
)
def test_names_of_the_engines_own_columns_are_refused(name: str) -> None:
    text = BASE + f'derived:\n  - name: "{name}"\n    expr: "email_open_count_7d + 1"\n'
    with pytest.raises(SpecError, match=f"{name!r} is reserved"):
        parse_feature_spec(text)
    with pytest.raises(SpecError, match="is reserved"):
        parse_feature_spec(BASE.replace('"{event_type}_count_{window}"', f'"{name}"'))


def test_equal_specs_have_equal_fingerprints_and_different_ones_differ() -> None:
    assert parse_feature_spec(BASE).fingerprint == parse_feature_spec(BASE).fingerprint
    other = parse_feature_spec(BASE.replace("[7, 28]", "[7, 14]"))
    assert other.fingerprint != parse_feature_spec(BASE).fingerprint


def test_a_key_given_twice_is_an_error_not_a_silent_replacement() -> None:
    """Appending a second `derived:` to a copy of the spec once replaced the shipped list."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "features" / "config" / "feature_spec.yaml"
    shipped = path.read_text("utf-8")
    assert "\nderived:" in shipped
    appended = shipped + '\nderived:\n  - name: x\n    expr: "page_view_count_7d + 1"\n'
    with pytest.raises(SpecError, match="key 'derived' appears twice"):
        parse_feature_spec(appended)


def test_a_snippet_alone_is_told_to_start_from_a_copy_of_the_spec() -> None:
    snippet = 'derived:\n  - name: x\n    expr: "page_view_count_7d + 1"\n'
    with pytest.raises(SpecError, match=r"copy features/config/feature_spec\.yaml"):
        parse_feature_spec(snippet)


@pytest.mark.parametrize("seed", ["1", "2"])
def test_a_spec_has_the_same_fingerprint_in_every_process(seed: str) -> None:
    """Logged to MLflow and compared across runs: it must not follow the string hashing a
    process happens to draw (frozensets of event types iterate in that order)."""
    import os
    import subprocess
    import sys

    from features.spec import load_feature_spec

    code = "from features.spec import load_feature_spec; print(load_feature_spec().fingerprint)"
    env = {**os.environ, "PYTHONHASHSEED": seed}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == load_feature_spec().fingerprint


def test_the_readme_example_adds_a_feature_to_the_shipped_spec() -> None:
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    # the README says: add this entry to the existing derived: list
    blocks = re.findall(r"existing `derived:` list.*?```yaml\n(.*?)```", readme, re.DOTALL)
    assert len(blocks) == 1
    shipped = (
        Path(__file__).resolve().parents[2] / "features" / "config" / "feature_spec.yaml"
    ).read_text(encoding="utf-8")
    assert shipped.count("\nderived:\n") == 1
    extended = shipped.replace("\nderived:\n", "\nderived:\n" + blocks[0], 1)
    spec = parse_feature_spec(extended)
    assert "demo_requests_per_visit_28d" in spec.names
    assert "demo_requests_per_visit_90d" in spec.names
    assert len(spec.names) == len(load_feature_spec().names) + 2


@pytest.mark.parametrize(
    ("listed", "message"),
    [
        ("[segment, segment]", r"\['segment'\] are listed more than once"),
        ("[segment, marketing_consent]", r"\['marketing_consent'\] cannot be attributes"),
        ("[contact_id]", r"\['contact_id'\] cannot be attributes"),
    ],
)
def test_attributes_are_listed_once_and_never_the_id_or_the_consent(
    listed: str, message: str
) -> None:
    with pytest.raises(SpecError, match=message):
        parse_feature_spec(BASE + f"attributes: {listed}\n")
    assert parse_feature_spec(BASE + "attributes: [segment]\n").attribute_names(["x"]) == [
        "segment"
    ]


def test_an_empty_filter_list_is_an_error_and_a_repeated_name_says_what_it_lacks() -> None:
    with pytest.raises(SpecError, match="event_type"):
        parse_feature_spec(BASE + "    where: {event_type: []}\n")
    with pytest.raises(SpecError, match=r"needs \{window\}"):
        parse_feature_spec(BASE.replace('"{event_type}_count_{window}"', '"{event_type}_count"'))


def test_a_spec_of_all_history_windows_has_no_longest_window() -> None:
    spec = parse_feature_spec(BASE.replace("[7, 28]", "[all]"))
    assert spec.names == ("email_open_count_all", "email_click_count_all")
    assert spec.longest_window_days is None
    assert parse_feature_spec(BASE.replace("[7, 28]", "[all, 28]")).longest_window_days == 28


@pytest.mark.parametrize("gap", ["0", "1e-9", "-5", ".inf", ".nan", "1e15"])
def test_a_session_gap_outside_one_second_to_a_century_is_an_error(gap: str) -> None:
    with pytest.raises(SpecError, match="not a usable gap between sessions"):
        parse_feature_spec(BASE.replace("session_gap_minutes: 30", f"session_gap_minutes: {gap}"))
    assert parse_feature_spec(BASE.replace("30", "0.5")).session_gap_minutes == 0.5


@pytest.mark.parametrize(
    "name",
    [
        "views_{}",
        "n_{window",
        "n_{window.x}",
        "n_{0}",
        # Python's formatting would make names no one wrote of these: 'n_  7d', "n_'7d'", 'n_p'
        "n_{window:>4}",
        "n_{window!r}",
        "n_{event_type[0]}_{window}",
        "n_}{window}",
    ],
)
def test_a_name_that_is_not_a_template_is_an_error_naming_the_entry(name: str) -> None:
    with pytest.raises(SpecError, match=r"aggregate '.*' is not a name template"):
        parse_feature_spec(BASE.replace('"{event_type}_count_{window}"', f'"{name}"'))


@pytest.mark.parametrize(
    "name", ["visits.{window}", "^visits_{window}$", "{window}_visits", "visits {window}"]
)
def test_a_feature_name_that_is_not_a_name_is_an_error_naming_it(name: str) -> None:
    # each is a column in every engine (Spark reads a dot as a field of a struct), a LightGBM
    # feature and a word in derived expressions
    with pytest.raises(SpecError, match=r"feature name '.*7d.*' is not a name; use letters"):
        parse_feature_spec(BASE.replace('"{event_type}_count_{window}"', f'"{name}"'))


def test_feature_names_in_any_alphabet_are_names() -> None:
    spec = parse_feature_spec(BASE.replace("_count_", "_köp_"))
    assert set(spec.names) == {
        f"{t}_köp_{w}d" for t in ("email_open", "email_click") for w in (7, 28)
    }


def test_an_empty_feature_name_is_an_error() -> None:
    with pytest.raises(SpecError, match="feature name '' is not a name"):
        parse_feature_spec(
            BASE.replace("for_each: {event_type: [email_open, email_click]}", "")
            .replace('"{event_type}_count_{window}"', '""')
            .replace("[7, 28]", "[all]")
        )


def test_feature_names_that_differ_only_in_case_are_an_error() -> None:
    text = (
        BASE
        + """  - name: "Email_open_count_{window}"
    kind: count
    where: {event_type: [email_open]}
    windows: [7]
"""
    )
    with pytest.raises(
        SpecError,
        match="features 'email_open_count_7d' and 'Email_open_count_7d' differ only in case",
    ):
        parse_feature_spec(text)
    with pytest.raises(SpecError, match="feature name 'AS_OF' is reserved"):
        parse_feature_spec(
            text.replace("Email_open_count_{window}", "AS_OF").replace("[7]", "[all]")
        )


def test_a_for_each_over_nothing_is_an_error() -> None:
    with pytest.raises(SpecError, match="for_each over event_type lists nothing"):
        parse_feature_spec(BASE.replace("[email_open, email_click]", "[]"))


def test_a_spec_file_that_cannot_be_read_is_an_error_saying_why(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"cannot be read .* give the YAML file itself"):
        load_feature_spec(tmp_path)
    latin = tmp_path / "spec.yaml"
    latin.write_bytes(BASE.encode() + b"# caf\xe9\n")
    with pytest.raises(SpecError, match="is not UTF-8 text"):
        load_feature_spec(latin)


def test_history_days_is_how_far_back_the_features_read() -> None:
    """What a raw-events request must send: the longest window, or all history when a
    feature (or the rules stage's 'ever purchased') reads it."""
    assert load_feature_spec().history_days is None  # the shipped spec reads all history
    windowed = parse_feature_spec(BASE + "rules_stage: false\n")
    assert windowed.history_days == 28
    assert parse_feature_spec(BASE).history_days is None  # the rules stage, on by default
    assert (
        parse_feature_spec(
            BASE.replace("[7, 28]", "[7, all]") + "rules_stage: false\n"
        ).history_days
        is None
    )
    # whether an event in a sessions window starts a session depends on the matching event
    # before it, up to the session gap earlier: a 30-minute gap reads a day more
    sessions = BASE + "  - {name: 'web_sessions_{window}', kind: sessions, windows: [28]}\n"
    assert parse_feature_spec(sessions + "rules_stage: false\n").history_days == 29
    longer = sessions.replace("session_gap_minutes: 30", f"session_gap_minutes: {3 * 1440 + 1}")
    assert parse_feature_spec(longer + "rules_stage: false\n").history_days == 32


@pytest.mark.parametrize(
    ("template", "names"),
    [
        ("web-visits_{window}", ("web-visits_7d", "web-visits_28d")),
        ("n_{window:>4}", ("n_  7d", "n_ 28d")),
    ],
)
def test_a_stored_models_spec_keeps_names_the_rules_came_after(
    template: str, names: tuple[str, ...]
) -> None:
    """A model trained before feature names were held to names and templates to their three
    placeholders was trained, tested and registered with those features: read back to serve
    it (``logged=True``), its spec still expands to them; a new spec is refused."""
    text = BASE.replace('"{event_type}_count_{window}"', f'"{template}"').replace(
        "for_each: {event_type: [email_open, email_click]}", ""
    )
    with pytest.raises(SpecError):
        parse_feature_spec(text)
    assert parse_feature_spec(text, logged=True).names == names
    cased = BASE + '  - {name: "Email_open_count_all", kind: count, windows: [all]}\n'
    cased = cased.replace("[7, 28]", "[7, all]")
    with pytest.raises(SpecError, match="differ only in case"):
        parse_feature_spec(cased)
    stored = parse_feature_spec(cased, logged=True)
    assert {"email_open_count_all", "Email_open_count_all"} <= set(stored.names)


@pytest.mark.parametrize(
    ("name", "says"),
    [
        # Python's parser reads names in NFKC form: an expression naming the ligature read
        # another feature, file_downloads_7d (Spark review: every engine gave 30, not 10)
        ("\ufb01le_downloads_7d", "reads as 'file_downloads_7d' in derived expressions"),
        ("\u017fessions_7d", "reads as 'sessions_7d'"),  # long s
        ("min", "is a function of derived expressions"),
        # keywords are names to str.isidentifier, but no expression can name them
        ("class", "'class' is a Python keyword"),
        ("True", "'True' is a Python keyword"),
    ],
)
def test_a_feature_name_derived_expressions_would_read_otherwise_is_refused(
    name: str, says: str
) -> None:
    text = BASE + f'  - name: "{name}"\n    kind: count\n    windows: [7]\n'
    text = text.replace('"{name}_7d"', f'"{name}"')
    with pytest.raises(SpecError, match=re.escape(says)):
        parse_feature_spec(text)
    # a spec a model was trained with still loads as it was written
    assert name in parse_feature_spec(text, logged=True).names


@pytest.mark.parametrize("terms", [MAX_EXPRESSION_DEPTH + 2, 5_000])
def test_an_expression_too_deep_for_the_engines_is_refused_when_the_spec_loads(
    terms: int,
) -> None:
    """A sum of a thousand terms loaded and then overflowed the stack in every engine; of
    five thousand, Python's parser itself (a review): one line naming the entry, at load."""
    long = " + ".join(["email_open_count_7d"] * terms)
    text = BASE + f'derived:\n  - name: "wide"\n    expr: "{long}"\n'
    with pytest.raises(SpecError, match=r"derived 'wide'.*nests more than 200 operations deep"):
        parse_feature_spec(text)
    # as many terms as the message says may be: 200 additions
    fits = " + ".join(["email_open_count_7d"] * (MAX_EXPRESSION_DEPTH + 1))
    spec = parse_feature_spec(BASE + f'derived:\n  - name: "wide"\n    expr: "{fits}"\n')
    assert "wide" in spec.names


def test_a_stored_models_deep_expression_is_still_read() -> None:
    """A model trained before the limit built 250 terms in every engine (diff review): its
    spec, read back, loads as it was; a new spec refuses it (above)."""
    long = " + ".join(["email_open_count_7d"] * 250)
    text = BASE + f'derived:\n  - name: "wide"\n    expr: "{long}"\n'
    assert "wide" in parse_feature_spec(text, logged=True).names
