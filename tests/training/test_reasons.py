"""Reasons in the CRM's words: phrases from the feature spec, and the top positive
contributions per contact (path credits or LightGBM's ``pred_contrib``)."""

from __future__ import annotations

import math

import lightgbm as lgb
import numpy as np
import pytest

from features.spec import FeatureSpec, load_feature_spec, parse_feature_spec
from features.vocabulary import CHANNELS, EVENT_TYPES
from training.reasons import (
    _event_words,
    _SpecIndex,
    contributions_for_class,
    describe_feature,
    top_reasons,
)


@pytest.fixture(scope="module")
def spec() -> FeatureSpec:
    return load_feature_spec()


@pytest.fixture(scope="module")
def vocabulary_spec() -> FeatureSpec:
    """Every event type and every channel, as count, recency and share features."""
    return parse_feature_spec(
        """
session_gap_minutes: 30
aggregates:
  - {name: "{event_type}_count_{window}", kind: count, for_each: {event_type: all}, windows: [7]}
  - {name: "last_{event_type}", kind: days_since_last, for_each: {event_type: all}}
  - name: "{channel}_count_{window}"
    kind: count
    for_each: {channel: all}
    where_not: {event_type: [message_send]}
    windows: [28]
  - {name: "all_{window}", kind: count, where_not: {event_type: [message_send]}, windows: [28]}
derived:
  - {name: "{channel}_part", expr: "{channel}_count_28d / all_28d", for_each: {channel: all}}
""",
        origin="test spec",
    )


@pytest.fixture(scope="module")
def filter_spec() -> FeatureSpec:
    """Filters with several event types, exclusions and channels."""
    return parse_feature_spec(
        """
session_gap_minutes: 30
aggregates:
  - name: "deep_{window}"
    kind: count
    where: {event_type: [add_to_cart, checkout_start]}
    windows: [7]
  - name: "many_types_{window}"
    kind: count
    where: {event_type: [email_open, email_click, page_view, product_view]}
    windows: [7]
  - {name: "everything_{window}", kind: count, windows: [1]}
  - name: "not_buying_{window}"
    kind: count
    where_not: {event_type: [message_send, purchase]}
    windows: [28]
  - name: "owned_{window}"
    kind: count
    where: {channel: [web, app]}
    where_not: {event_type: [message_send]}
    windows: [28]
  - name: "off_email_{window}"
    kind: count
    where_not: {event_type: [message_send], channel: [email]}
    windows: [28]
  - {name: "web_sessions_{window}", kind: sessions, where: {channel: [web]}, windows: [7]}
  - name: "page_days_{window}"
    kind: distinct_days
    where: {event_type: [page_view]}
    windows: [28]
  - {name: "first_purchase", kind: days_since_first, where: {event_type: [purchase]}}
  - name: "last_deep"
    kind: days_since_last
    where: {event_type: [add_to_cart, checkout_start]}
  - name: "cart_value_{window}"
    kind: sum
    column: value
    where: {event_type: [add_to_cart]}
    windows: [28]
  - {name: "purchase_{window}", kind: count, where: {event_type: [purchase]}, windows: [28]}
derived:
  - {name: "bought_part", expr: "purchase_28d / not_buying_28d"}
""",
        origin="test spec",
    )


# --- describe_feature: aggregates of the shipped spec ------------------------------------------


@pytest.mark.parametrize(
    ("value", "phrase"),
    [
        (3, "3 e-mail clicks in the last 7 days"),
        (1, "1 e-mail click in the last 7 days"),
        (0, "no e-mail clicks in the last 7 days"),
        (2.0, "2 e-mail clicks in the last 7 days"),
        (np.int64(5), "5 e-mail clicks in the last 7 days"),
    ],
)
def test_a_count_feature_reads_as_events_in_the_window(
    spec: FeatureSpec, value: object, phrase: str
) -> None:
    assert describe_feature("email_click_count_7d", value, spec) == phrase


def test_a_pricing_view_count_reads_as_pricing_page_views(spec: FeatureSpec) -> None:
    assert (
        describe_feature("pricing_view_count_28d", 2, spec)
        == "2 pricing-page views in the last 28 days"
    )


def test_a_channel_count_reads_as_interactions_on_that_channel(spec: FeatureSpec) -> None:
    assert (
        describe_feature("web_event_count_28d", 12, spec)
        == "12 web interactions in the last 28 days"
    )


def test_a_count_of_everything_but_message_sends_reads_as_interactions(spec: FeatureSpec) -> None:
    assert describe_feature("event_count_90d", 5, spec) == "5 interactions in the last 90 days"
    assert describe_feature("event_count_35d", 1, spec) == "1 interaction in the last 35 days"


def test_a_purchase_value_sum_reads_as_money_spent_with_two_decimals(spec: FeatureSpec) -> None:
    assert (
        describe_feature("purchase_value_sum_all", 250.5, spec)
        == "250.50 spent on purchases in all history"
    )
    assert (
        describe_feature("purchase_value_sum_28d", 0.0, spec)
        == "nothing spent on purchases in the last 28 days"
    )
    # a review sent -0.0 (valid JSON, a number the model reads as 0): no minus sign shown
    assert (
        describe_feature("average_order_value_all", -0.0, spec)
        == "average purchase value of 0.00 in all history"
    )


@pytest.mark.parametrize(
    ("value", "phrase"),
    [
        (4, "active on 4 days in the last 28 days"),
        (1, "active on 1 day in the last 28 days"),
        (0, "not active in the last 28 days"),
    ],
)
def test_active_days_read_as_days_with_activity(spec: FeatureSpec, value: int, phrase: str) -> None:
    assert describe_feature("active_days_28d", value, spec) == phrase


@pytest.mark.parametrize(
    ("value", "phrase"),
    [
        (2, "2 sessions in the last 7 days"),
        (1, "1 session in the last 7 days"),
        (0, "no sessions in the last 7 days"),
    ],
)
def test_a_session_count_reads_as_sessions(spec: FeatureSpec, value: int, phrase: str) -> None:
    assert describe_feature("session_count_7d", value, spec) == phrase


@pytest.mark.parametrize(
    ("value", "phrase"),
    [
        (2.3, "pricing page viewed 2 days ago"),
        (1.2, "pricing page viewed 1 day ago"),
        (0.4, "pricing page viewed less than a day ago"),
        (None, "pricing page never viewed"),
        (math.nan, "pricing page never viewed"),
    ],
)
def test_days_since_the_last_event_read_as_how_long_ago_it_happened(
    spec: FeatureSpec, value: float | None, phrase: str
) -> None:
    assert describe_feature("days_since_last_pricing_view", value, spec) == phrase


def test_days_since_the_last_purchase_read_as_the_last_purchase_or_never(
    spec: FeatureSpec,
) -> None:
    assert describe_feature("days_since_last_purchase", 12.7, spec) == "last purchase 12 days ago"
    assert describe_feature("days_since_last_purchase", None, spec) == "never purchased"


def test_days_since_the_last_click_and_cart_use_past_participles(spec: FeatureSpec) -> None:
    assert describe_feature("days_since_last_email_click", 3, spec) == "e-mail clicked 3 days ago"
    assert describe_feature("days_since_last_add_to_cart", 5, spec) == "cart added to 5 days ago"
    assert (
        describe_feature("days_since_last_demo_request", 0, spec)
        == "demo requested less than a day ago"
    )


def test_a_general_page_view_is_not_called_a_visit_to_the_website(spec: FeatureSpec) -> None:
    """Pricing and product pages are web pages with words of their own: a contact who viewed
    only those was told "website never visited"."""
    assert describe_feature("days_since_last_page_view", None, spec) == "no general page view yet"
    assert describe_feature("days_since_last_page_view", 3, spec) == "page viewed 3 days ago"


def test_days_since_the_first_and_last_interaction_read_as_first_and_last(
    spec: FeatureSpec,
) -> None:
    assert describe_feature("days_since_first_event", 40.9, spec) == "first interaction 40 days ago"
    assert describe_feature("days_since_last_event", 3, spec) == "last interaction 3 days ago"
    assert describe_feature("days_since_first_event", None, spec) == "no interactions yet"


# --- describe_feature: derived features ------------------------------------------------------


def test_an_open_without_click_ratio_reads_as_a_share_of_opens(spec: FeatureSpec) -> None:
    assert (
        describe_feature("open_without_click_ratio_28d", 0.8, spec)
        == "80% of e-mail opens without a click in the last 28 days"
    )


def test_a_channel_share_reads_as_a_share_of_interactions_by_that_channel(
    spec: FeatureSpec,
) -> None:
    assert (
        describe_feature("email_share_28d", 0.25, spec)
        == "25% of interactions by e-mail in the last 28 days"
    )
    assert (
        describe_feature("web_share_28d", 0.5, spec)
        == "50% of interactions on the web in the last 28 days"
    )


def test_a_ratio_of_different_events_reads_as_events_per_event(spec: FeatureSpec) -> None:
    assert (
        describe_feature("cart_to_purchase_ratio_90d", 0.5, spec)
        == "0.5 purchases per add to cart in the last 90 days"
    )
    assert (
        describe_feature("cart_to_purchase_ratio_90d", 1, spec)
        == "1 purchase per add to cart in the last 90 days"
    )
    assert (
        describe_feature("click_through_ratio_7d", 0.25, spec)
        == "0.25 e-mail clicks, push clicks or SMS clicks per message sent in the last 7 days"
    )


def test_a_sum_over_a_count_of_the_same_events_reads_as_an_average_value(
    spec: FeatureSpec,
) -> None:
    assert (
        describe_feature("average_order_value_all", 125, spec)
        == "average purchase value of 125.00 in all history"
    )


def test_amounts_summed_in_another_order_read_alike(spec: FeatureSpec) -> None:
    """Review: one contact read "average purchase value of 48.88" from its raw events and
    "48.89" from its batch features; their sums, 195.54 and 195.54000000000002, differ in the
    last bit (the order of the additions), and so did their averages, either side of 48.885."""
    batch, online = 195.54000000000002 / 4, 195.54 / 4
    assert batch != online
    said = {describe_feature("average_order_value_all", v, spec) for v in (batch, online)}
    assert said == {"average purchase value of 48.88 in all history"}
    # ten billion and more keep their cents (review: 12345678901.23 read 12345678901.20)
    for amount in (12345678901.23, 123456789012.34):
        said = describe_feature("purchase_value_sum_all", amount, spec)
        assert said == f"{amount:.2f} spent on purchases in all history"
    share = math.nextafter(0.125, 1.0)  # a share one bit over 12.5 %
    said = {describe_feature("email_share_28d", v, spec) for v in (0.125, share)}
    assert len(said) == 1, said


def test_a_generic_derived_feature_reads_as_its_name_and_value(spec: FeatureSpec) -> None:
    assert (
        describe_feature("activity_trend_7d_vs_prior_28d", 2.5, spec)
        == "activity trend 7d vs prior 28d: 2.5"
    )
    assert (
        describe_feature("activity_trend_7d_vs_prior_28d", 1 / 3, spec)
        == "activity trend 7d vs prior 28d: 0.33"
    )


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("activity_trend_7d_vs_prior_28d", "activity trend 7d vs prior 28d: not defined"),
        ("open_without_click_ratio_28d", "no e-mail opens in the last 28 days"),
        ("email_share_28d", "no interactions in the last 28 days"),
        ("average_order_value_all", "no purchases in all history"),
    ],
)
@pytest.mark.parametrize("missing", [None, math.nan])
def test_a_missing_ratio_reads_as_its_count_of_none_else_as_not_defined(
    spec: FeatureSpec, name: str, said: str, missing: float | None
) -> None:
    """ "average order value all: not defined" was the first reason of a dormant contact in
    four (review): a ratio of counts and sums is missing only when its count is 0, which says
    why; a ratio of another shape reads as not defined."""
    assert describe_feature(name, missing, spec) == said


def test_a_missing_ratio_with_a_recency_in_it_reads_as_not_defined() -> None:
    """A recency is missing when the contact never had the event: the count in the
    denominator may be anything, so it is not said to be 0."""
    spec = parse_feature_spec(
        """
session_gap_minutes: 30
aggregates:
  - {name: "buys_{window}", kind: count, where: {event_type: [purchase]}, windows: [90]}
  - {name: "since_visit", kind: days_since_last, where: {event_type: [page_view]}}
derived:
  - {name: "visit_days_per_buy", expr: "since_visit / buys_90d"}
  - {name: "buys_per_buy", expr: "buys_90d / buys_90d"}
""",
        origin="test spec",
    )
    assert describe_feature("visit_days_per_buy", None, spec) == "visit days per buy: not defined"
    assert describe_feature("buys_per_buy", None, spec) == "no purchases in the last 90 days"


# --- describe_feature: the rules stage and contact attributes -------------------------------


def test_the_rules_stage_reads_as_where_the_rules_put_the_contact(spec: FeatureSpec) -> None:
    assert describe_feature("rules_stage", "intent", spec) == "the rules put the contact in intent"


def test_a_contact_attribute_reads_as_name_and_value(spec: FeatureSpec) -> None:
    assert describe_feature("segment", "premium", spec) == "segment: premium"
    assert describe_feature("acquisition_source", None, spec) == "acquisition source: not known"
    assert describe_feature("is_vip", True, spec) == "is vip: yes"
    assert describe_feature("age", 34.0, spec) == "age: 34"


def test_a_date_attribute_reads_as_how_long_ago_it_was(spec: FeatureSpec) -> None:
    assert describe_feature("days_since_signup_date", 200.4, spec) == "signup date 200 days ago"
    assert describe_feature("days_since_signup_date", None, spec) == "signup date: not known"


def test_a_count_feature_with_a_non_numeric_value_is_an_error(spec: FeatureSpec) -> None:
    with pytest.raises(ValueError, match="email_click_count_7d"):
        describe_feature("email_click_count_7d", "three", spec)


# --- describe_feature: the whole vocabulary, and filters of several kinds ----------------------


def test_every_event_type_has_its_own_phrase(vocabulary_spec: FeatureSpec) -> None:
    counts = {t: describe_feature(f"{t}_count_7d", 2, vocabulary_spec) for t in EVENT_TYPES}
    recent = {t: describe_feature(f"last_{t}", 3, vocabulary_spec) for t in EVENT_TYPES}
    never = {t: describe_feature(f"last_{t}", None, vocabulary_spec) for t in EVENT_TYPES}
    for event_type in EVENT_TYPES:
        # the fallback from the name reads "<name> event(s)"; a phrase of our own never does
        fallback = f"{event_type.replace('_', ' ')} event"
        for phrase in (counts[event_type], recent[event_type], never[event_type]):
            assert "_" not in phrase
            assert fallback not in phrase, phrase
            assert phrase.strip() == phrase
            assert "  " not in phrase
    for phrases in (counts, recent, never):
        assert len(set(phrases.values())) == len(EVENT_TYPES)


def test_every_channel_has_its_own_phrase(vocabulary_spec: FeatureSpec) -> None:
    counts = {c: describe_feature(f"{c}_count_28d", 4, vocabulary_spec) for c in CHANNELS}
    shares = {c: describe_feature(f"{c}_part", 0.1, vocabulary_spec) for c in CHANNELS}
    for channel in CHANNELS:
        assert "_" not in counts[channel] + shares[channel]
        assert counts[channel].endswith(" interactions in the last 28 days")
        assert shares[channel].startswith("10% of interactions ")
        assert " channel " not in shares[channel]  # the fallback for an unknown channel
    assert len(set(counts.values())) == len(CHANNELS)
    assert len(set(shares.values())) == len(CHANNELS)


def test_an_event_type_without_words_reads_from_its_name() -> None:
    words = _event_words("loyalty_signup")
    assert (words.one, words.many) == ("loyalty signup event", "loyalty signup events")
    assert words.never == "no loyalty signup yet"


@pytest.mark.parametrize(
    ("name", "value", "phrase"),
    [
        ("deep_7d", 2, "2 adds to cart or checkout starts in the last 7 days"),
        ("deep_7d", 1, "1 add to cart or checkout start in the last 7 days"),
        ("many_types_7d", 9, "9 interactions in the last 7 days"),
        ("everything_1d", 4, "4 events in the last day"),
        ("not_buying_28d", 6, "6 interactions other than purchases in the last 28 days"),
        ("owned_28d", 3, "3 web or app interactions in the last 28 days"),
        ("off_email_28d", 3, "3 interactions outside e-mail in the last 28 days"),
        ("web_sessions_7d", 2, "2 web sessions in the last 7 days"),
        ("page_days_28d", 3, "page views on 3 days in the last 28 days"),
        ("page_days_28d", 0, "no page views in the last 28 days"),
        ("first_purchase", 61, "first purchase 61 days ago"),
        ("last_deep", 2, "last add to cart or checkout start 2 days ago"),
        ("last_deep", None, "no adds to cart or checkout starts yet"),
        ("cart_value_28d", 12, "12.00 in value from adds to cart in the last 28 days"),
        # the denominator excludes purchases: not a share of it, so "per"
        (
            "bought_part",
            0.05,
            "0.05 purchases per interaction other than purchases in the last 28 days",
        ),
    ],
)
def test_filters_with_several_event_types_exclusions_or_channels_read_sensibly(
    filter_spec: FeatureSpec, name: str, value: object, phrase: str
) -> None:
    assert describe_feature(name, value, filter_spec) == phrase


# --- top_reasons -------------------------------------------------------------------------------

_NAMES = ["email_click_count_7d", "pricing_view_count_28d", "session_count_7d", "segment"]
_VALUES = {
    "email_click_count_7d": 3,
    "pricing_view_count_28d": 1,
    "session_count_7d": 2,
    "segment": "premium",
}


def test_top_reasons_are_the_largest_positive_contributions_largest_first(
    spec: FeatureSpec,
) -> None:
    contributions = np.array([[0.2, 0.9, 0.5, 0.1, 5.0]])
    assert top_reasons(contributions, _NAMES, [_VALUES], spec, k=3) == [
        [
            "1 pricing-page view in the last 28 days",
            "2 sessions in the last 7 days",
            "3 e-mail clicks in the last 7 days",
        ]
    ]


def test_top_reasons_give_at_most_k_per_row(spec: FeatureSpec) -> None:
    contributions = np.array([[0.2, 0.9, 0.5, 0.1, 0.0], [0.4, 0.3, 0.2, 0.1, 0.0]])
    reasons = top_reasons(contributions, _NAMES, [_VALUES, _VALUES], spec, k=2)
    assert [len(r) for r in reasons] == [2, 2]
    assert reasons[1] == [
        "3 e-mail clicks in the last 7 days",
        "1 pricing-page view in the last 28 days",
    ]


def test_top_reasons_leave_out_features_pushing_away_and_the_bias(spec: FeatureSpec) -> None:
    contributions = np.array([[-0.5, 0.3, 0.0, -0.1, 9.0], [-1.0, -2.0, -0.1, math.nan, 1.0]])
    reasons = top_reasons(contributions, _NAMES, [_VALUES, _VALUES], spec, k=3)
    assert reasons == [["1 pricing-page view in the last 28 days"], []]


def test_top_reasons_break_ties_by_feature_order(spec: FeatureSpec) -> None:
    contributions = np.array([[0.1, 0.4, 0.4, 0.4, 0.0]])
    assert top_reasons(contributions, _NAMES, [_VALUES], spec, k=2) == [
        ["1 pricing-page view in the last 28 days", "2 sessions in the last 7 days"]
    ]


def test_top_reasons_pick_what_a_stable_sort_of_the_pushes_puts_first(spec: FeatureSpec) -> None:
    """The row-wise argmaxes choose as a stable sort of the negated pushes does (NaN last),
    on matrices full of ties, NaN, infinities and pushes away from the prediction."""
    rng = np.random.default_rng(5)
    names = _NAMES[:4]
    choices = [-1.0, 0.0, 0.25, 0.5, 1.0, math.nan, math.inf, -math.inf]
    for trial in range(300):
        contributions = rng.choice(choices, size=(int(rng.integers(1, 9)), len(names) + 1))
        if trial % 4 == 0:
            contributions = rng.normal(size=contributions.shape)
        values = [_VALUES] * len(contributions)
        for k in (1, 2, 3, 5):
            pushes = contributions[:, :-1]
            expected = []
            for row, order in enumerate(np.argsort(-pushes, axis=1, kind="stable")[:, :k]):
                chosen = []
                for j in order:
                    if not pushes[row, j] > 0:
                        break
                    chosen.append(describe_feature(names[j], _VALUES[names[j]], spec))
                expected.append(chosen)
            assert top_reasons(contributions, names, values, spec, k=k) == expected


def test_remembered_phrases_are_the_phrases_of_each_value_and_type(
    vocabulary_spec: FeatureSpec,
) -> None:
    names = ["email_click_count_7d", "last_purchase", "email_part"]
    rows = [
        {"email_click_count_7d": 3, "last_purchase": 2.5, "email_part": 0.25},
        {"email_click_count_7d": 1, "last_purchase": math.nan, "email_part": None},
        {"email_click_count_7d": 3, "last_purchase": 2.5, "email_part": 0.25},
        {"email_click_count_7d": 1.0, "last_purchase": 0.5, "email_part": 1},
        # a recency is remembered by its whole days: 2.9 after 2.5, 1.0 after 1.999
        {"email_click_count_7d": 2, "last_purchase": 2.9, "email_part": 0.5},
        {"email_click_count_7d": 2, "last_purchase": 1.999, "email_part": 0.5},
        {"email_click_count_7d": 2, "last_purchase": 1.0, "email_part": 0.5},
        # a missing value (None) is remembered per feature: the same phrase each time
        {"email_click_count_7d": 2, "last_purchase": None, "email_part": None},
    ]
    contributions = np.array([[3.0, 2.0, 1.0, 0.0]] * len(rows))
    first = top_reasons(contributions, names, rows, vocabulary_spec, k=3)
    again = top_reasons(contributions, names, rows, vocabulary_spec, k=3)  # from memory now
    fresh = [[describe_feature(n, row[n], vocabulary_spec) for n in names] for row in rows]
    assert first == again == fresh
    assert first[1][1] == "never purchased"  # NaN: described, not remembered
    assert first[7][1] == "never purchased"  # None: remembered by the feature's name
    assert first[7][2] == first[1][2]
    remembered = _SpecIndex.of(vocabulary_spec).described
    assert ("last_purchase", type(None), None) in remembered
    assert not any(key[0] == "last_purchase" and key[1] is float for key in remembered)
    assert first[2] == first[0]
    assert first[3][0] == "1 e-mail click in the last 7 days"
    assert first[4][1] == first[0][1] != first[5][1] == first[6][1]


def test_phrases_remembered_for_one_spec_are_not_used_for_another() -> None:
    def spec_with(window: int) -> FeatureSpec:
        return parse_feature_spec(
            f"""
session_gap_minutes: 30
aggregates:
  - {{name: "clicks", kind: count, where: {{event_type: [email_click]}}, windows: [{window}]}}
""",
            origin="test spec",
        )

    contributions = np.array([[1.0, 0.0]])
    week = top_reasons(contributions, ["clicks"], [{"clicks": 2}], spec_with(7))
    month = top_reasons(contributions, ["clicks"], [{"clicks": 2}], spec_with(28))
    assert week == [["2 e-mail clicks in the last 7 days"]]
    assert month == [["2 e-mail clicks in the last 28 days"]]


def test_top_reasons_reject_contributions_without_the_bias_column(spec: FeatureSpec) -> None:
    with pytest.raises(ValueError, match=r"4 columns but 4 feature names need 5"):
        top_reasons(np.zeros((1, 4)), _NAMES, [_VALUES], spec)


def test_top_reasons_reject_a_row_count_that_differs_from_the_values(spec: FeatureSpec) -> None:
    with pytest.raises(ValueError, match=r"2 rows but values have 1"):
        top_reasons(np.zeros((2, 5)), _NAMES, [_VALUES], spec)


def test_top_reasons_reject_a_flat_array(spec: FeatureSpec) -> None:
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        top_reasons(np.zeros(5), _NAMES, [_VALUES], spec)


def test_top_reasons_reject_a_row_without_a_chosen_feature(spec: FeatureSpec) -> None:
    row = {k: v for k, v in _VALUES.items() if k != "session_count_7d"}
    with pytest.raises(
        ValueError, match=r"values\[0\] has no value for feature 'session_count_7d'"
    ):
        top_reasons(np.array([[0.0, 0.0, 1.0, 0.0, 0.0]]), _NAMES, [row], spec)


# --- contributions_for_class -----------------------------------------------------------------


def test_contributions_for_class_takes_each_rows_block() -> None:
    # 2 features + bias = blocks of 3; 3 classes; values encode (class, column)
    contrib = np.array([[10 * c + j for c in range(3) for j in range(3)]] * 2, dtype=float)
    assert contributions_for_class(contrib, 2, 1).tolist() == [[10, 11, 12], [10, 11, 12]]
    per_row = contributions_for_class(contrib, 2, np.array([2, 0]))
    assert per_row.tolist() == [[20, 21, 22], [0, 1, 2]]


def test_contributions_for_class_reject_shapes_and_classes_that_do_not_fit() -> None:
    contrib = np.zeros((2, 9))
    with pytest.raises(ValueError, match="blocks of 4 columns"):
        contributions_for_class(contrib, 3, 0)
    with pytest.raises(ValueError, match="class index 3 is out of range for 3 classes"):
        contributions_for_class(contrib, 2, 3)
    with pytest.raises(ValueError, match="class index -1"):
        contributions_for_class(contrib, 2, np.array([0, -1]))
    with pytest.raises(ValueError, match="one per row"):
        contributions_for_class(contrib, 2, np.array([0, 1, 2]))


def test_contributions_for_class_match_a_real_lightgbm_multiclass_model() -> None:
    rng = np.random.default_rng(7)
    X = rng.normal(size=(60, 3))
    y = np.where(X[:, 0] > 0.5, 2, np.where(X[:, 1] > 0, 1, 0))
    booster = lgb.train(
        {
            "objective": "multiclass",
            "num_class": 3,
            "num_threads": 1,
            "verbose": -1,
            "seed": 7,
            "min_data_in_leaf": 5,
            "num_leaves": 4,
        },
        lgb.Dataset(X, label=y),
        num_boost_round=5,
    )
    contrib = np.asarray(booster.predict(X, pred_contrib=True))
    raw = np.asarray(booster.predict(X, raw_score=True))
    assert contrib.shape == (60, 4 * 3)
    predicted = raw.argmax(axis=1)
    assert len(set(predicted.tolist())) == 3  # every block is exercised
    chosen = contributions_for_class(contrib, 3, predicted)
    assert chosen.shape == (60, 4)
    np.testing.assert_allclose(chosen.sum(axis=1), raw[np.arange(60), predicted], atol=1e-9)
    for c in range(3):
        np.testing.assert_allclose(
            contributions_for_class(contrib, 3, c).sum(axis=1), raw[:, c], atol=1e-9
        )
