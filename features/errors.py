"""The one base class of errors that are the user's to fix (bad input, bad settings).

The command line shows these as one line and exit code 2; anything else is a bug and keeps its
traceback. Each message names what is wrong and how to fix it.
"""

from __future__ import annotations


class InputError(ValueError):
    """Input or settings the user can fix; the message says how."""


# a money value no sum can hold, for every engine (the online path included)
NOT_FINITE_VALUE = (
    "the events' `value` holds NaN or an infinite number; money values are finite numbers: "
    "give events as funnelcast ingest writes them (it sets such rows aside and counts them)"
)
