"""What the commands share about their arguments: numbers within bounds (with the value in the
error), UsageError, and the help formatter that keeps the exit-status table as written."""

from __future__ import annotations

import argparse
import math


def number(kind, *, low: float, what: str, high: float | None = None):
    """An argparse type: text parsed by `kind` (int or float), finite and in [low, high], else
    an ArgumentTypeError saying `what` it must be and the text given."""

    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            v = None
        if v is None or not (math.isfinite(v) and v >= low and (high is None or v <= high)):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return v

    parse.__name__ = kind.__name__
    return parse


class UsageError(ValueError):
    """The command line is wrong (an option's value, or options that do not go together), found
    by a command after argparse: `fnn <command>: error: ...` and exit status 2, as argparse's
    own errors."""


class HelpFormatter(argparse.HelpFormatter):
    """argparse's, except that a text with indented lines (the exit-status table of the
    epilog) is printed as written rather than refilled into one paragraph."""

    def _fill_text(self, text, width, indent):
        if "\n  " in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)
