"""Why the model said what it said, in the CRM's words.

Each feature's push on a row's raw score (the bias last) comes from the stage model: path
credits or LightGBM's ``pred_contrib`` (``training.models.LightGBMStageModel.
class_contributions``). The features that push hardest toward the predicted outcome become
phrases such as "3 e-mail clicks in the last 7 days" or "pricing page viewed 2 days ago".

Phrases come from the feature spec's metadata (an aggregate's kind, event types, channels and
window; a derived feature's expression), not from a list of feature names, so a feature added to
the spec reads well without a code change. The only hand-written words are one noun and one
recency phrase per event type and one adjective per channel, covering the closed vocabulary.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt
import pandas as pd

from features.spec import Aggregate, Derived, FeatureSpec
from features.vocabulary import CHANNELS, EVENT_TYPES, PURCHASE_EVENTS

# The column the engines write when ``spec.rules_stage`` is on (features.engine.with_rules_stage).
_RULES_STAGE: Final = "rules_stage"
# Message sends are what we did, not what the contact did: without them, events are
# "interactions".
_SENDS: Final = "message_send"
# More event types than this in one filter read as "interactions", not as a list.
_MAX_LISTED: Final = 3


# --- the words ---------------------------------------------------------------------------------


class _EventWords(NamedTuple):
    one: str  # "pricing-page view": what one event is called
    many: str  # "pricing-page views"
    last: str  # "pricing page viewed", followed by "2 days ago"
    never: str  # "pricing page never viewed": no such event in all history


_EVENT_WORDS: Final[dict[str, _EventWords]] = {
    "message_send": _EventWords(
        "message sent", "messages sent", "last message sent", "no message sent yet"
    ),
    "impression": _EventWords("ad impression", "ad impressions", "ad seen", "no ad seen yet"),
    "email_open": _EventWords(
        "e-mail open", "e-mail opens", "e-mail opened", "e-mail never opened"
    ),
    "push_open": _EventWords(
        "push open", "push opens", "push message opened", "push message never opened"
    ),
    "video_view": _EventWords("video view", "video views", "video watched", "video never watched"),
    # a pricing or product page has words of its own: "website never visited" read as no web
    # activity at all to a contact who had viewed the pricing page
    "page_view": _EventWords("page view", "page views", "page viewed", "no general page view yet"),
    "app_open": _EventWords("app open", "app opens", "app opened", "app never opened"),
    "email_click": _EventWords(
        "e-mail click", "e-mail clicks", "e-mail clicked", "e-mail never clicked"
    ),
    "push_click": _EventWords(
        "push click", "push clicks", "push message clicked", "push message never clicked"
    ),
    "sms_click": _EventWords("SMS click", "SMS clicks", "SMS link clicked", "SMS never clicked"),
    "ad_click": _EventWords("ad click", "ad clicks", "ad clicked", "ad never clicked"),
    "product_view": _EventWords(
        "product view", "product views", "product page viewed", "product page never viewed"
    ),
    "content_download": _EventWords(
        "download", "downloads", "content downloaded", "content never downloaded"
    ),
    "form_submit": _EventWords(
        "form submission", "form submissions", "form filled in", "form never filled in"
    ),
    "webinar_signup": _EventWords(
        "webinar sign-up",
        "webinar sign-ups",
        "signed up for a webinar",
        "never signed up for a webinar",
    ),
    "favourite": _EventWords("favourite", "favourites", "favourite added", "no favourite added"),
    "add_to_cart": _EventWords(
        "add to cart", "adds to cart", "cart added to", "nothing ever added to cart"
    ),
    "checkout_start": _EventWords(
        "checkout start", "checkout starts", "checkout started", "checkout never started"
    ),
    "pricing_view": _EventWords(
        "pricing-page view",
        "pricing-page views",
        "pricing page viewed",
        "pricing page never viewed",
    ),
    "demo_request": _EventWords(
        "demo request", "demo requests", "demo requested", "demo never requested"
    ),
    "trial_start": _EventWords(
        "trial start", "trial starts", "trial started", "trial never started"
    ),
    "coupon_redeem": _EventWords(
        "coupon redemption", "coupon redemptions", "coupon redeemed", "coupon never redeemed"
    ),
    "purchase": _EventWords("purchase", "purchases", "last purchase", "never purchased"),
    "subscription_start": _EventWords(
        "subscription start", "subscription starts", "subscribed", "never subscribed"
    ),
    "review": _EventWords("review", "reviews", "review written", "never wrote a review"),
    "referral": _EventWords("referral", "referrals", "referred someone", "never referred anyone"),
    "share": _EventWords("share", "shares", "content shared", "never shared content"),
    "support_contact": _EventWords(
        "support contact", "support contacts", "support contacted", "support never contacted"
    ),
    "unsubscribe": _EventWords("unsubscribe", "unsubscribes", "unsubscribed", "never unsubscribed"),
}


class _ChannelWords(NamedTuple):
    adjective: str  # "e-mail", as in "12 e-mail interactions"
    by: str  # "by e-mail", as in "25% of interactions by e-mail"


_CHANNEL_WORDS: Final[dict[str, _ChannelWords]] = {
    "email": _ChannelWords("e-mail", "by e-mail"),
    "sms": _ChannelWords("SMS", "by SMS"),
    "push": _ChannelWords("push", "by push message"),
    "web": _ChannelWords("web", "on the web"),
    "app": _ChannelWords("app", "in the app"),
    "ads": _ChannelWords("ad", "through ads"),
    "social": _ChannelWords("social-media", "on social media"),
    "store": _ChannelWords("in-store", "in a store"),
    "sales": _ChannelWords("sales", "with sales"),
    "support": _ChannelWords("support", "with support"),
    "direct_mail": _ChannelWords("direct-mail", "by direct mail"),
    "referral": _ChannelWords("referral-partner", "through referral partners"),
    "search": _ChannelWords("search", "through search"),
    "other": _ChannelWords("other-channel", "on other channels"),
}


def _event_words(event_type: str) -> _EventWords:
    """The words for an event type; one added to the vocabulary without words reads from its
    name rather than failing a prediction."""
    if event_type in _EVENT_WORDS:
        return _EVENT_WORDS[event_type]
    text = event_type.replace("_", " ")
    return _EventWords(f"{text} event", f"{text} events", f"last {text} event", f"no {text} yet")


def _channel_words(channel: str) -> _ChannelWords:
    if channel in _CHANNEL_WORDS:
        return _CHANNEL_WORDS[channel]
    text = channel.replace("_", " ")
    return _ChannelWords(f"{text}-channel", f"on the {text} channel")


# --- values ------------------------------------------------------------------------------------


def _is_missing(value: object) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float | np.floating) and math.isnan(value)


def _number(name: str, value: object) -> float:
    """A feature value as a float; anything else is the caller's bug, not a phrase."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.number):
        raise ValueError(
            f"feature {name!r} is numeric in the spec but its value is {value!r}; pass the "
            "feature table's raw values"
        )
    return float(value)


def _settled(number: float) -> float:
    """The number to 12 significant digits (more from ten billion up, to keep its cents): a sum
    of the same amounts added in another order (the batch engines and the online path do) can
    differ in its last bit, 195.54 against 195.54000000000002, and a phrase rounded from it to
    cents must not tell them apart (48.88 against 48.89 for their average of four)."""
    if number == 0:
        return 0.0  # -0.0 too (an average of no money sent as -0.0): "0.00", never "-0.00"
    if not math.isfinite(number):
        return number
    digits = max(12, math.floor(math.log10(abs(number))) + 3)
    return float(f"{number:.{digits}g}")


def _plain(number: float) -> str:
    """A number without noise: 3, 2.5, 0.33."""
    text = f"{_settled(number):.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _money(number: float) -> str:
    return f"{_settled(number):.2f}"


def _percent(number: float) -> str:
    return f"{_settled(number):.0%}"


def _days_ago(days: float) -> str:
    whole = math.floor(days)
    if whole < 1:  # elapsed time, not the calendar: "today" read wrong for last evening
        return "less than a day ago"
    return "1 day ago" if whole == 1 else f"{whole} days ago"


def _counted(number: float, one: str, many: str) -> str:
    if number == 0:
        return f"no {many}"
    return f"{_plain(number)} {one if number == 1 else many}"


def _readable(name: str) -> str:
    return name.replace("_", " ")


def _window_text(window_days: int | None) -> str:
    if window_days is None:
        return "in all history"
    return "in the last day" if window_days == 1 else f"in the last {window_days} days"


def _listed(words: Sequence[str]) -> str:
    """ "a", "a or b", "a, b or c"."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def _article(noun: str) -> str:
    first = noun.split(" ", 1)[0]
    # acronyms are read letter by letter: "an SMS click"
    vowel_sound = first[0] in "AEFHILMNORSX" if first.isupper() else first[0] in "aeiou"
    return f"an {noun}" if vowel_sound else f"a {noun}"


# --- what an aggregate counts ------------------------------------------------------------------


class _Nouns(NamedTuple):
    one: str
    many: str
    generic: bool  # plain "interactions": any contact action, on any channel


def _event_set(aggregate: Aggregate) -> frozenset[str]:
    included = EVENT_TYPES if aggregate.event_types is None else aggregate.event_types
    return frozenset(included) - aggregate.exclude_event_types


def _channel_set(aggregate: Aggregate) -> frozenset[str]:
    included = CHANNELS if aggregate.channels is None else aggregate.channels
    return frozenset(included) - aggregate.exclude_channels


def _in_vocabulary_order(names: frozenset[str], vocabulary: Sequence[str]) -> list[str]:
    # sorted by the vocabulary, so a phrase never depends on set iteration order
    return sorted(
        names, key=lambda n: (vocabulary.index(n) if n in vocabulary else len(vocabulary), n)
    )


def _event_nouns(aggregate: Aggregate) -> tuple[str, str]:
    if aggregate.event_types is None:
        if _SENDS not in aggregate.exclude_event_types:
            return "event", "events"  # what we sent counts too: not only the contact's actions
        others = _in_vocabulary_order(aggregate.exclude_event_types - {_SENDS}, EVENT_TYPES)
        if not others or len(others) > _MAX_LISTED:
            return "interaction", "interactions"
        unless = _listed([_event_words(t).many for t in others])
        return f"interaction other than {unless}", f"interactions other than {unless}"
    types = _in_vocabulary_order(_event_set(aggregate), EVENT_TYPES)
    if not types or len(types) > _MAX_LISTED:
        return "interaction", "interactions"
    words = [_event_words(t) for t in types]
    return _listed([w.one for w in words]), _listed([w.many for w in words])


def _channel_prefix(aggregate: Aggregate) -> tuple[str, str]:
    """An adjective before the noun ("web interactions") or a phrase after it ("interactions
    outside e-mail")."""
    if aggregate.channels is not None:
        channels = _in_vocabulary_order(_channel_set(aggregate), CHANNELS)
        return _listed([_channel_words(c).adjective for c in channels]) if channels else "", ""
    if aggregate.exclude_channels:
        channels = _in_vocabulary_order(aggregate.exclude_channels, CHANNELS)
        return "", f" outside {_listed([_channel_words(c).adjective for c in channels])}"
    return "", ""


def _nouns(aggregate: Aggregate) -> _Nouns:
    one, many = _event_nouns(aggregate)
    before, after = _channel_prefix(aggregate)
    generic = one == "interaction" and not before and not after
    if before and not one.startswith(before):  # no "e-mail e-mail clicks"
        one, many = f"{before} {one}", f"{before} {many}"
    return _Nouns(f"{one}{after}", f"{many}{after}", generic)


def _single_event_type(aggregate: Aggregate) -> str | None:
    types = _event_set(aggregate)
    if aggregate.event_types is None or len(types) != 1:
        return None
    return next(iter(types))


def _describe_aggregate(aggregate: Aggregate, value: object) -> str:
    if aggregate.kind in ("days_since_last", "days_since_first"):
        return _describe_recency(aggregate, value)
    if _is_missing(value):
        return f"{_readable(aggregate.name)}: not known"  # counts are 0 when none; missing is odd
    number = _number(aggregate.name, value)
    nouns = _nouns(aggregate)
    window = _window_text(aggregate.window_days)
    if aggregate.kind == "sum":
        if _event_set(aggregate) and _event_set(aggregate) <= PURCHASE_EVENTS:
            spent = "nothing" if number == 0 else _money(number)
            return f"{spent} spent on {nouns.many} {window}"
        return f"{_money(number)} in value from {nouns.many} {window}"
    if aggregate.kind == "distinct_days":
        days = "1 day" if number == 1 else f"{_plain(number)} days"
        if nouns.generic:
            return f"not active {window}" if number == 0 else f"active on {days} {window}"
        return f"no {nouns.many} {window}" if number == 0 else f"{nouns.many} on {days} {window}"
    if aggregate.kind == "sessions":
        before, after = _channel_prefix(aggregate)
        one = f"{before} session{after}".strip()
        return f"{_counted(number, one, f'{before} sessions{after}'.strip())} {window}"
    return f"{_counted(number, nouns.one, nouns.many)} {window}"


def _describe_recency(aggregate: Aggregate, value: object) -> str:
    first = aggregate.kind == "days_since_first"
    single = _single_event_type(aggregate)
    if (
        single is not None
        and not first
        and aggregate.channels is None
        and not aggregate.exclude_channels
    ):
        words = _event_words(single)
        if _is_missing(value):
            return words.never
        return f"{words.last} {_days_ago(_number(aggregate.name, value))}"
    nouns = _nouns(aggregate)
    if _is_missing(value):
        return f"no {nouns.many} yet"
    when = _days_ago(_number(aggregate.name, value))
    return f"{'first' if first else 'last'} {nouns.one} {when}"


# --- derived features: ratios the expression shows -------------------------------------------

_Phrase = Callable[[float], str]


def _aggregate_at(node: ast.expr, aggregates: Mapping[str, Aggregate]) -> Aggregate | None:
    if isinstance(node, ast.Name):
        return aggregates.get(node.id)
    return None


def _summed_counts(node: ast.expr, aggregates: Mapping[str, Aggregate]) -> list[Aggregate] | None:
    """The count aggregates of ``a`` or ``a + b + ...``; None for any other shape."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left = _summed_counts(node.left, aggregates)
        right = _summed_counts(node.right, aggregates)
        return None if left is None or right is None else left + right
    aggregate = _aggregate_at(node, aggregates)
    return [aggregate] if aggregate is not None and aggregate.kind == "count" else None


def _without(
    node: ast.expr, base: Aggregate, aggregates: Mapping[str, Aggregate]
) -> Aggregate | None:
    """``b`` when ``node`` is ``base - b`` or ``max(base - b, 0)``."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "max"
        and len(node.args) == 2
        and isinstance(node.args[1], ast.Constant)
        and node.args[1].value == 0
    ):
        node = node.args[0]
    if not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Sub)):
        return None
    left = _aggregate_at(node.left, aggregates)
    right = _aggregate_at(node.right, aggregates)
    if left is None or left.name != base.name or right is None or right.kind != "count":
        return None
    return right


def _absent(base: _Nouns, missing: _Nouns) -> str:
    """What the base events lack, without the words both share: e-mail opens "without a
    click", not "without an e-mail click"."""
    base_words, missing_words = base.one.split(" "), missing.one.split(" ")
    shared = 0
    while (
        shared < min(len(base_words), len(missing_words)) - 1
        and base_words[shared] == missing_words[shared]
    ):
        shared += 1
    return _article(" ".join(missing_words[shared:]))


def _numerator_nouns(parts: list[Aggregate]) -> _Nouns | None:
    """One noun for ``a + b + ...``: the union of their event types, when they differ only in
    event type."""
    first = parts[0]
    if len(parts) == 1:
        return _nouns(first)
    if any(
        p.event_types is None
        or (p.channels, p.exclude_channels, p.exclude_event_types)
        != (first.channels, first.exclude_channels, first.exclude_event_types)
        for p in parts
    ):
        return None
    union = frozenset().union(*(p.event_types or frozenset() for p in parts))
    merged = Aggregate(
        name=first.name,
        kind=first.kind,
        event_types=union,
        channels=first.channels,
        exclude_event_types=first.exclude_event_types,
        exclude_channels=first.exclude_channels,
        window_days=first.window_days,
    )
    return _nouns(merged)


def _ratio_phrase(derived: Derived, aggregates: Mapping[str, Aggregate]) -> _Phrase | None:
    """A phrase for ``numerator / count`` shapes over aggregates of one window; None when the
    expression is something else (it then reads as its name and value)."""
    tree = derived.tree
    if not (isinstance(tree, ast.BinOp) and isinstance(tree.op, ast.Div)):
        return None
    denominator = _aggregate_at(tree.right, aggregates)
    if denominator is None or denominator.kind != "count":
        return None
    base = _nouns(denominator)
    window = _window_text(denominator.window_days)

    lacking = _without(tree.left, denominator, aggregates)
    if lacking is not None:
        if lacking.window_days != denominator.window_days:
            return None
        absent = _absent(base, _nouns(lacking))
        return lambda v: f"{_percent(v)} of {base.many} without {absent} {window}"

    total = _aggregate_at(tree.left, aggregates)
    if total is not None and total.kind == "sum":
        if (total.window_days, _event_set(total), _channel_set(total)) != (
            denominator.window_days,
            _event_set(denominator),
            _channel_set(denominator),
        ):
            return None
        return lambda v: f"average {base.one} value of {_money(v)} {window}"

    parts = _summed_counts(tree.left, aggregates)
    if parts is None or any(p.window_days != denominator.window_days for p in parts):
        return None
    counted = _numerator_nouns(parts)
    if counted is None:
        return None
    events = frozenset().union(*(_event_set(p) for p in parts))
    channels = frozenset().union(*(_channel_set(p) for p in parts))
    if events == _event_set(denominator) and channels < _channel_set(denominator):
        by = _listed([_channel_words(c).by for c in _in_vocabulary_order(channels, CHANNELS)])
        return lambda v: f"{_percent(v)} of {base.many} {by} {window}"
    if events <= _event_set(denominator) and channels <= _channel_set(denominator):
        return lambda v: f"{_percent(v)} of {base.many} were {counted.many} {window}"

    def per(v: float) -> str:
        return f"{_plain(v)} {counted.one if v == 1 else counted.many} per {base.one} {window}"

    return per


# --- the spec, indexed once per spec -----------------------------------------------------------

_MAX_INDEXES: Final = 8
_MAX_DESCRIBED: Final = 50_000  # about 12 MiB of phrases
_INDEXES: dict[int, tuple[FeatureSpec, _SpecIndex]] = {}  # by id of the spec


@dataclass
class _SpecIndex:
    aggregates: dict[str, Aggregate]
    derived: dict[str, Derived]
    rules_stage: bool
    recencies: frozenset[str] = frozenset()  # days_since_last / days_since_first features
    phrases: dict[str, _Phrase | None] = field(default_factory=dict)
    # (feature, type, value) -> its phrase, for whole numbers and text (``describe``): they
    # repeat across contacts, and a phrase costs microseconds of string work each time
    described: dict[tuple[str, type, object], str] = field(default_factory=dict)

    @classmethod
    def of(cls, spec: FeatureSpec) -> _SpecIndex:
        """The index of ``spec``, built once per spec object (a model keeps its spec)."""
        known = _INDEXES.get(id(spec))
        if known is not None and known[0] is spec:
            return known[1]
        if len(_INDEXES) >= _MAX_INDEXES:
            _INDEXES.clear()
        index = cls(
            aggregates={a.name: a for a in spec.aggregates},
            derived={d.name: d for d in spec.derived},
            rules_stage=spec.rules_stage,
            recencies=frozenset(
                a.name for a in spec.aggregates if a.kind in ("days_since_last", "days_since_first")
            ),
        )
        _INDEXES[id(spec)] = (spec, index)  # the spec is kept, so its id is not reused
        return index

    def describe(self, name: str, value: object) -> str:
        """``_describe``, remembered for the values that repeat across contacts: whole numbers
        (counts, sessions, days), text, and recencies by their whole days (all their phrase
        shows). Other fractions (ratios, money) are nearly all distinct and would only fill
        the memory. A missing value, None or NaN (which is no key: each is a key of its own),
        is the key of None: both read alike."""
        key: tuple[str, type, object]
        if value is None or (type(value) is float and value != value):
            key = (name, type(None), None)  # one phrase per feature (no signup date, a ratio of 0)
        elif type(value) is float and name in self.recencies and math.isfinite(value):
            key = (name, int, math.floor(value))
        elif isinstance(value, bool) or not (
            isinstance(value, int | str) or (isinstance(value, float) and value.is_integer())
        ):
            return _describe(name, value, self)
        else:
            key = (name, type(value), value)
        phrase = self.described.get(key)
        if phrase is None:
            if len(self.described) >= _MAX_DESCRIBED:
                self.described.clear()
            phrase = self.described[key] = _describe(name, value, self)
        return phrase

    def undefined_phrase(self, name: str) -> str:
        """A derived feature without a value: the ratio whose count is 0, said as that count
        ("no purchases in the last 90 days"), when every input is a count or a sum (never
        missing, so its denominator is why); else "<name>: not defined". It was said as
        "average order value all: not defined", the first reason of a dormant contact in four
        (review)."""
        derived = self.derived[name]
        tree = derived.tree
        denominator = None
        if isinstance(tree, ast.BinOp) and isinstance(tree.op, ast.Div):
            denominator = _aggregate_at(tree.right, self.aggregates)
        never_missing = all(
            n in self.aggregates and self.aggregates[n].kind in ("count", "sum")
            for n in derived.inputs
        )
        if denominator is None or denominator.kind != "count" or not never_missing:
            return f"{_readable(name)}: not defined"
        return _describe_aggregate(denominator, 0)

    def ratio_phrase(self, name: str) -> _Phrase | None:
        if name not in self.phrases:
            self.phrases[name] = _ratio_phrase(self.derived[name], self.aggregates)
        return self.phrases[name]


def _describe(name: str, value: object, index: _SpecIndex) -> str:
    if name in index.aggregates:
        return _describe_aggregate(index.aggregates[name], value)
    if name in index.derived:
        if _is_missing(value):
            return index.undefined_phrase(name)
        number = _number(name, value)
        phrase = index.ratio_phrase(name)
        return phrase(number) if phrase is not None else f"{_readable(name)}: {_plain(number)}"
    if name == _RULES_STAGE and index.rules_stage:
        return (
            "rules stage: not known"
            if _is_missing(value)
            else f"the rules put the contact in {value}"
        )
    return _describe_attribute(name, value)


def _describe_attribute(name: str, value: object) -> str:
    if _is_missing(value):
        return f"{_readable(name.removeprefix('days_since_'))}: not known"
    if isinstance(value, bool | np.bool_):
        return f"{_readable(name)}: {'yes' if value else 'no'}"
    if isinstance(value, int | float | np.number):
        if name.startswith("days_since_"):  # a date attribute, as training turns it into days
            return f"{_readable(name.removeprefix('days_since_'))} {_days_ago(float(value))}"
        return f"{_readable(name)}: {_plain(float(value))}"
    return f"{_readable(name)}: {value}"


# --- the API ---------------------------------------------------------------------------------


def describe_feature(name: str, value: object, spec: FeatureSpec) -> str:
    """One short phrase for a feature and a contact's raw value of it: "3 e-mail clicks in the
    last 7 days", "pricing page viewed 2 days ago", "segment: premium"."""
    return _describe(name, value, _SpecIndex.of(spec))


def top_reasons(
    contributions: np.ndarray,
    feature_names: Sequence[str],
    values: Sequence[Mapping[str, object]],
    spec: FeatureSpec,
    *,
    k: int = 3,
) -> list[list[str]]:
    """Per row, the ``k`` features with the largest positive contribution (largest first, ties
    in feature order), as phrases. ``contributions`` are for one output (path credits or
    ``pred_contrib``): one column per feature and the bias last."""
    contributions = np.asarray(contributions)
    if contributions.ndim != 2:
        raise ValueError(
            f"contributions must be a (rows, features + 1) matrix; got shape {contributions.shape}"
        )
    rows, columns = contributions.shape
    if columns != len(feature_names) + 1:
        raise ValueError(
            f"contributions have {columns} columns but {len(feature_names)} feature names "
            f"need {len(feature_names) + 1} (one per feature, the bias last); for a multiclass "
            "model take each row's class block with contributions_for_class"
        )
    if rows != len(values):
        raise ValueError(f"contributions have {rows} rows but values have {len(values)}")
    if k < 1:
        raise ValueError(f"k must be at least 1; got {k}")
    index = _SpecIndex.of(spec)
    order, pushes = _largest(contributions[:, :-1], k)  # the bias is never a reason
    out: list[list[str]] = []
    for row, (chosen, pushed, row_values) in enumerate(
        zip(order.tolist(), pushes.tolist(), values, strict=True)
    ):
        reasons: list[str] = []
        for j, push in zip(chosen, pushed, strict=True):
            if not push > 0:  # NaN and pushes away from the prediction are no reason
                break
            name = feature_names[j]
            if name not in row_values:
                raise ValueError(f"values[{row}] has no value for feature {name!r}")
            reasons.append(index.describe(name, row_values[name]))
        out.append(reasons)
    return out


def _largest(pushes: np.ndarray, k: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]:
    """Per row, the columns of the ``k`` largest pushes, largest first, equal pushes in column
    order (NaN below everything), and their pushes: what a stable sort of the negated pushes
    puts first, found by ``k`` row-wise argmaxes, a tenth of the sort's time for a
    1,000-contact batch (each argmax takes the first of equal maxima)."""
    work = np.where(np.isnan(pushes), -np.inf, pushes)
    rows = np.arange(len(work))
    width = min(k, work.shape[1])
    order = np.empty((len(work), width), dtype=np.intp)
    chosen = np.empty((len(work), width), dtype=np.float64)
    for i in range(width):
        column = np.argmax(work, axis=1)
        order[:, i] = column
        chosen[:, i] = work[rows, column]
        work[rows, column] = -np.inf  # taken; a column taken again pushes -inf, never a reason
    return order, chosen


def contributions_for_class(
    contrib: np.ndarray, n_features: int, class_index: np.ndarray | int
) -> np.ndarray:
    """Each row's block of a multiclass ``pred_contrib`` (shape ``(rows, (n_features + 1) *
    n_classes)``, class blocks side by side), as ``(rows, n_features + 1)``. ``class_index`` is
    one class for all rows or one per row."""
    contrib = np.asarray(contrib)
    width = n_features + 1
    if contrib.ndim != 2 or n_features < 0 or contrib.shape[1] % width:
        raise ValueError(
            f"contributions of shape {contrib.shape} do not split into class blocks of "
            f"{width} columns (n_features + 1)"
        )
    rows, n_classes = contrib.shape[0], contrib.shape[1] // width
    index: npt.NDArray[np.int64]
    if isinstance(class_index, int | np.integer):
        index = np.full(rows, int(class_index), dtype=np.int64)
    else:
        given = np.asarray(class_index)
        if given.shape != (rows,) or not np.issubdtype(given.dtype, np.integer):
            raise ValueError(
                f"class_index must be one int or {rows} ints (one per row); got "
                f"{given.dtype} of shape {given.shape}"
            )
        index = given.astype(np.int64)
    if rows and (index.min() < 0 or index.max() >= n_classes):
        bad = index[(index < 0) | (index >= n_classes)][0]
        raise ValueError(f"class index {bad} is out of range for {n_classes} classes")
    blocks = contrib.reshape(rows, n_classes, width)
    return blocks[np.arange(rows), index]
