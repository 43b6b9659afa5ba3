"""The closed vocabularies of funnelcast: event types, channels and funnel stages.

Every source is mapped onto these names by its YAML mapping; anything else is rejected at
validation. The stage each event type signals is the rules baseline of PRODUCT.md ("deepest
signal in the lookback"), kept here, in the lowest layer, because features, labels and the
rules model all read it.
"""

from __future__ import annotations

import re
from typing import Final

# Funnel stages, in the order the funnel is shown. "dormant" comes first: it is the absence of
# signal, not a stage after advocacy.
STAGES: Final[tuple[str, ...]] = (
    "dormant",
    "awareness",
    "consideration",
    "intent",
    "conversion",
    "retention",
    "advocacy",
)

CHANNELS: Final[tuple[str, ...]] = (
    "email",
    "sms",
    "push",
    "web",
    "app",
    "ads",
    "social",
    "store",
    "sales",
    "support",
    "direct_mail",
    "referral",
    "search",
    "other",
)

# Event type -> the stage it signals under the rules (None: no stage signal of its own).
# Order of the dict is the order of the vocabulary in docs and error messages.
EVENT_SIGNALS: Final[dict[str, str | None]] = {
    # Marketing sends are what we did, not what the contact did: they signal nothing.
    "message_send": None,
    "impression": "awareness",
    "email_open": "awareness",
    "push_open": "awareness",
    "video_view": "awareness",
    "page_view": "awareness",  # a repeat visit (several active days) lifts to consideration
    "app_open": "awareness",
    "email_click": "consideration",
    "push_click": "consideration",
    "sms_click": "consideration",
    "ad_click": "consideration",
    "product_view": "consideration",
    "content_download": "consideration",
    "form_submit": "consideration",
    "webinar_signup": "consideration",
    "favourite": "consideration",
    "add_to_cart": "intent",
    "checkout_start": "intent",
    "pricing_view": "intent",
    "demo_request": "intent",
    "trial_start": "intent",
    "coupon_redeem": "intent",
    "purchase": "conversion",  # retention when the contact had bought before
    "subscription_start": "conversion",
    "review": "advocacy",  # advocacy only for customers; a prospect's review is consideration
    "referral": "advocacy",
    "share": "advocacy",
    "support_contact": None,
    "unsubscribe": None,
}

EVENT_TYPES: Final[tuple[str, ...]] = tuple(EVENT_SIGNALS)

# Event types that make a contact a customer.
PURCHASE_EVENTS: Final[frozenset[str]] = frozenset({"purchase", "subscription_start"})
ADVOCACY_EVENTS: Final[frozenset[str]] = frozenset({"review", "referral", "share"})

# The call to action that fits each stage (PRODUCT.md, "what to send").
STAGE_CTA: Final[dict[str, str]] = {
    "dormant": "win-back",
    "awareness": "soft",
    "consideration": "deepen",
    "intent": "act",
    "conversion": "onboard",
    "retention": "cross-sell",
    "advocacy": "referral",
}

# The kind of message that carries the stage's call to action (PRODUCT.md's examples).
STAGE_MESSAGE: Final[dict[str, str]] = {
    "dormant": "win-back or re-awareness message",
    "awareness": "educational content: read more, discover how, see the film, get tips",
    "consideration": "guides, customer cases, comparisons, calculators, talk to an expert",
    "intent": "offer: buy now, book today, get your quote, unlock the discount",
    "conversion": "confirmation and onboarding",
    "retention": "cross-sell, loyalty or renewal offer",
    "advocacy": "referral programme or review request",
}


def stage_rank(stage: str) -> int:
    """Position of a stage in the funnel (dormant = 0), for "deepest signal" comparisons."""
    return STAGES.index(stage)


# a value that reads as a name (letters, `_`, `-` and spaces, as event types and channels are
# named) is quoted, so that a mapping's typo can be found; any other (an e-mail address, a phone
# number, an id in the wrong column) may be a contact's personal data, which the console does
# not show: the refusal went to a scheduler's log, of a contact without consent too (export
# review)
_NAME_LIKE = re.compile(r"[A-Za-z_][A-Za-z_ -]{0,39}")
NOT_A_NAME = "<a value that is not a name, not shown>"


def _shown(value: object) -> str:
    if value is None or (isinstance(value, str) and _NAME_LIKE.fullmatch(value)):
        return repr(value)
    return NOT_A_NAME


def unknown_vocabulary_message(column: str, values: list[object]) -> str:
    """The error for events whose ``column`` (event_type or channel) holds names outside the
    contract: the feature builders take events as ``funnelcast ingest`` writes them. Values
    that are not name-like are not quoted (``_shown``)."""
    shown = ", ".join(_shown(v) for v in values[:5]) + (" ..." if len(values) > 5 else "")
    names = "event types" if column == "event_type" else "channels"
    return (
        f"the events' `{column}` holds {shown}, not among the contract's {names}; give events "
        "as funnelcast ingest or validate writes them (a source's mapping maps its names onto "
        "the contract's, and rows that cannot be mapped are set aside and counted)"
    )
