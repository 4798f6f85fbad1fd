"""Argument types shared by the commands: numbers within bounds, with the value in the error."""

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
