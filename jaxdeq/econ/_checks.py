"""Checks of solver settings, shared by the settings Modules of `jaxdeq.econ`
(`PINN`, `DEQN`, `FiniteDifference`, `PINNHousehold`), with one message format:
who complains, what is wrong, and what to pass instead. A value of the wrong type
is a `TypeError`, a value out of range a `ValueError`."""

import math
import numbers

import numpy as np


def _example(label: str, example) -> str:
    return f"Pass e.g. `{label}={example!r}`."


def check_int(name: str, label: str, value, minimum: int, example: int) -> None:
    """An integer setting (a Python or NumPy integer, not a bool) of at least
    `minimum`."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (numbers.Integral, np.integer)
    ):
        raise TypeError(
            f"{name}: `{label}` must be an int, got {value!r} "
            f"({type(value).__name__}). {_example(label, example)}"
        )
    if value < minimum:
        raise ValueError(
            f"{name}: `{label}` must be at least {minimum}, got {value}. "
            f"{_example(label, example)}"
        )


def check_real(
    name: str,
    label: str,
    value,
    example: float,
    *,
    positive: bool = False,
    upper: float = math.inf,
    allow_inf: bool = False,
) -> None:
    """A real setting: finite (or `inf` when `allow_inf`), non-negative (positive
    when `positive`) and at most `upper`."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (numbers.Real, np.floating, np.integer)
    ):
        raise TypeError(
            f"{name}: `{label}` must be a real number, got {value!r} "
            f"({type(value).__name__}). {_example(label, example)}"
        )
    value = float(value)
    low_ok = value > 0 if positive else value >= 0
    finite_ok = math.isfinite(value) or (allow_inf and value == math.inf)
    if not (low_ok and finite_ok and value <= upper):
        parts = ["> 0" if positive else ">= 0"]
        if upper < math.inf:
            parts.append(f"<= {upper:g}")
        rule = " and ".join(parts)
        finite = "" if allow_inf else "finite and "
        raise ValueError(
            f"{name}: `{label}` must be {finite}{rule}, got {value!r}. "
            f"{_example(label, example)}"
        )


def check_optional_tolerance(name: str, label: str, value, example: float) -> None:
    """A tolerance that may be `None` (a default that follows the dtype)."""
    if value is not None:
        check_real(name, label, value, example)


def check_numbers(name: str, **values) -> None:
    """Model parameters that must be real numbers (not bools, strings or
    arrays): a `TypeError` naming the first that is not."""
    for label, value in values.items():
        if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (numbers.Real, np.floating, np.integer)
        ):
            raise TypeError(
                f"{name}: `{label}` must be a real number, got {value!r} "
                f"({type(value).__name__}). Pass a float, e.g. `{label}=0.05`."
            )
