"""Argument types shared by the commands: numbers within bounds, with the value in the error."""

from __future__ import annotations

import argparse
import math


def number(kind, *, low: float, what: str):
    """An argparse type: text parsed by `kind` (int or float), finite and >= low, else an
    ArgumentTypeError saying `what` it must be and the text given."""
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            v = None
        if v is None or not (math.isfinite(v) and v >= low):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return v
    parse.__name__ = kind.__name__
    return parse
