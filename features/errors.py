"""The one base class of errors that are the user's to fix (bad input, bad settings).

The command line shows these as one line and exit code 2; anything else is a bug and keeps its
traceback. Each message names what is wrong and how to fix it.
"""

from __future__ import annotations


class InputError(ValueError):
    """Input or settings the user can fix; the message says how."""
