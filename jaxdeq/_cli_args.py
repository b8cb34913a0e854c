"""Argument types shared by the `jaxdeq` commands."""

import argparse

import numpy as np


def _bounded(convert, description, accept):
    """An argparse type: `convert` the text, then require `accept(value)`."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {description}, got {text!r}")
        return value

    return parse


_positive_int = _bounded(int, "a positive integer", lambda v: v >= 1)
_non_negative_int = _bounded(int, "a non-negative integer", lambda v: v >= 0)
_positive_float = _bounded(
    float, "a positive number", lambda v: v > 0 and bool(np.isfinite(v))
)
