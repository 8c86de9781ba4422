"""When two class labels are one class: the rule the model server refuses labels by and the trainer keeps rows by.

A label is compared by its key: an integral number (1, 1.0, "1", "1.0", True) is its integer's text, another
float its ``repr``, text its stripped self. The server refuses a label whose key is not a key of the model's
classes (``bad_label``); the trainer leaves out a logged label whose key is not a class of the task (labels
written before the server refused them, or by a server of another model or version).
"""

from __future__ import annotations

import math
from typing import Any


def class_key(value: Any) -> str:
    """Comparable text of a class label: 1, 1.0, "1" and True agree."""
    number = as_number(value)
    if math.isfinite(number) and number == int(number):
        return str(int(number))
    if isinstance(value, float):
        return repr(value)
    return str(value).strip()


def as_number(value: Any) -> float:
    """NaN when not a number; an integer beyond float range is infinite, not an OverflowError."""
    try:
        if isinstance(value, (bool, int, float)):
            return float(value)
        if isinstance(value, str):
            return float(value.strip())
    except OverflowError:
        return math.inf if value > 0 else -math.inf
    except ValueError:
        return math.nan
    return math.nan
