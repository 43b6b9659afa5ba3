"""Hand-written yardsticks for the feature benchmark: the shipped spec's 144 event features
(``features/config/feature_spec.yaml`` with ``rules_stage: false`` and no contacts table),
each written once, by hand, for one tool: Polars, DuckDB SQL and pandas.

They are single-purpose on purpose: no spec is read and no engine code is imported, so they show
what the best hand-written code in each tool costs, and the funnelcast engine is measured
against them. ``tests/benchmarks/test_yardsticks.py`` holds each equal to the engine.

Every module exposes ``build(events_path, as_of)``: one row per contact with any event in the
90 days before ``as_of``, columns ``contact_id``, ``as_of`` and the 144 features, computed from
the events strictly before ``as_of``. The semantics are the engine's: windows are
``[as_of - N days, as_of)``; counts and sums are 0 when nothing matches; active days are distinct
UTC dates; a session starts at a matching event whose previous matching event (over all history)
is more than 30 minutes earlier, or that has none; ``days_since_*`` are fractional days
(microseconds / 86,400,000,000), missing when there is no such event; a ratio with a zero
denominator is missing.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

# the event type vocabulary, in the spec's expansion order ({event_type}_count_{window})
EVENT_TYPES: Final = (
    "message_send",
    "impression",
    "email_open",
    "push_open",
    "video_view",
    "page_view",
    "app_open",
    "email_click",
    "push_click",
    "sms_click",
    "ad_click",
    "product_view",
    "content_download",
    "form_submit",
    "webinar_signup",
    "favourite",
    "add_to_cart",
    "checkout_start",
    "pricing_view",
    "demo_request",
    "trial_start",
    "coupon_redeem",
    "purchase",
    "subscription_start",
    "review",
    "referral",
    "share",
    "support_contact",
    "unsubscribe",
)
COUNT_WINDOWS: Final = (7, 28, 90)  # {event_type}_count_{window}
SHARE_CHANNELS: Final = ("email", "sms", "push", "web", "app", "ads", "social", "store")
EVENT_COUNT_WINDOWS: Final = (7, 28, 35, 90)  # event_count_{window}, sends excluded
ACTIVE_DAYS_WINDOWS: Final = (7, 28, 90)
SESSION_WINDOWS: Final = (7, 28)
RECENCY_TYPES: Final = (
    "email_open",
    "email_click",
    "page_view",
    "product_view",
    "content_download",
    "form_submit",
    "add_to_cart",
    "checkout_start",
    "pricing_view",
    "demo_request",
    "trial_start",
    "purchase",
    "review",
    "referral",
    "unsubscribe",
)
SEND: Final = "message_send"  # what we sent, not what the contact did
NOT_IN_SESSIONS: Final = ("message_send", "impression")
ELIGIBLE_DAYS: Final = 90  # a contact is scored when it had any event in this window
SESSION_GAP: Final = dt.timedelta(minutes=30)
MICROS_PER_DAY: Final = 86_400_000_000
