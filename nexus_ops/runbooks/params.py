"""Runbook parameters: their declared types, and checking what a caller passes.

Papermill injects whatever it is given: unknown names and values of any type.
Here every value is checked against the type written in the notebook's
``parameters`` cell (``dry_run: bool = True``) before a kernel starts. Values
typed on a command line (strings) are parsed into that type; values from JSON
must already have it. A number's range ends its comment, ``[low..high]`` (either
end may be left open: ``[1..]``), and is checked too; floats must be finite and
integers without a declared range fit 64 bits.

>>> spec = ParamSpec(name="keep", type="int", default=3, help="backups to keep")
>>> validate({"keep": spec}, {"keep": "5"}, from_strings=True)
{'keep': 5}
>>> validate({"keep": spec}, {"kep": 5})
Traceback (most recent call last):
...
nexus_ops.errors.ParameterError: unknown parameter 'kep'; did you mean 'keep'?
  hint: the parameters are: keep (int)
>>> declared_range("int", "backups to keep [1..100]")
(1, 100)
"""

from __future__ import annotations

import ast
import difflib
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from nexus_ops.errors import ParameterError
from nexus_ops.runbooks.models import ParamSpec, number

SCALARS = ("bool", "int", "float", "str")
_LIST = re.compile(r"^(?:list|List)\[(bool|int|float|str)\]$")
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_RANGE = re.compile(r"\[([^\[\]]*?)\.\.([^\[\]]*)\]\s*$")
INT64 = (-(2**63), 2**63 - 1)  # what an integer without a declared range must fit


def supported(type_name: str) -> bool:
    return type_name in SCALARS or bool(_LIST.match(type_name))


def parse_default(text: str) -> Any:
    """The default's value from its source text (a Python literal)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def validate(
    specs: Mapping[str, ParamSpec], given: Mapping[str, Any], *, from_strings: bool = False
) -> dict[str, Any]:
    """``given`` checked (and, from strings, parsed); a ParameterError names every problem."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    for name, raw in given.items():
        spec = specs.get(name)
        if spec is None:
            problems.append(_unknown(name, specs))
            continue
        try:
            value = parse(spec.type, raw) if from_strings else check(spec.type, raw)
            values[name] = within(spec, value)
        except ValueError as exc:
            problems.append(f"parameter {name!r} expects {spec.kind}, got {raw!r}: {exc}")
    if problems:
        listing = ", ".join(f"{s.name} ({s.kind})" for s in specs.values()) or "none"
        raise ParameterError("; ".join(problems), hint=f"the parameters are: {listing}")
    return values


def declared_range(type_name: str, help_text: str) -> tuple[int | float | None, int | float | None]:
    """The ``[low..high]`` that ends a number's comment (ValueError if it is not numbers
    of the parameter's type); ``(None, None)`` when there is none."""
    match = _RANGE.search(help_text)
    if match is None:
        return None, None
    item = _item_type(type_name)
    if item not in ("int", "float"):
        raise ValueError(f"a range fits numbers, not {type_name}")
    low, high = (_range_end(item, end.strip()) for end in match.groups())
    if low is not None and high is not None and low > high:
        raise ValueError(f"the range [{low}..{high}] is empty")
    return low, high


def _range_end(type_name: str, text: str) -> int | float | None:
    if not text:
        return None
    try:
        end: int | float = parse(type_name, text)
    except ValueError:
        raise ValueError(f"the end {text!r} of its range is not an {type_name}") from None
    if isinstance(end, float) and not math.isfinite(end):
        raise ValueError(f"the end {text!r} of its range is not finite (leave it open: [1..])")
    return end


def within(spec: ParamSpec, value: Any) -> Any:
    """``value`` if it (or, for a list, each item) is a finite number in the range."""
    for item in value if isinstance(value, list) else [value]:
        _check_number(spec, item)
    return value


def _check_number(spec: ParamSpec, value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("not a finite number")
    if not isinstance(value, int | float) or isinstance(value, bool):
        return
    low, high = spec.minimum, spec.maximum
    if isinstance(value, int) and low is None and high is None:
        low, high = INT64
    if low is not None and value < low:
        raise ValueError(f"below {number(low)}")
    if high is not None and value > high:
        raise ValueError(f"above {number(high)}")


def _item_type(type_name: str) -> str:
    match = _LIST.match(type_name)
    return match.group(1) if match else type_name


def _unknown(name: str, specs: Mapping[str, ParamSpec]) -> str:
    close = difflib.get_close_matches(name, list(specs), n=1)
    return f"unknown parameter {name!r}" + (f"; did you mean {close[0]!r}?" if close else "")


def parse(type_name: str, text: Any) -> Any:
    """A command-line string turned into ``type_name`` (ValueError if it is not one)."""
    if not isinstance(text, str):
        return check(type_name, text)
    match = _LIST.match(type_name)
    if match:
        items = _split_list(text)
        return [parse(match.group(1), item) for item in items]
    if type_name == "bool":
        lowered = text.strip().lower()
        if lowered in _TRUE | _FALSE:
            return lowered in _TRUE
        raise ValueError("use true or false")
    if type_name == "int":
        return int(text.strip())
    if type_name == "float":
        return float(text.strip())
    return text


def _split_list(text: str) -> list[Any]:
    stripped = text.strip()
    if stripped.startswith("["):
        value = json.loads(stripped)
        if not isinstance(value, list):
            raise ValueError("not a list")
        return value
    return [item.strip() for item in stripped.split(",") if item.strip()]


def check(type_name: str, value: Any) -> Any:
    """``value`` if it already is a ``type_name`` (an int is accepted as a float)."""
    match = _LIST.match(type_name)
    if match:
        if not isinstance(value, list):
            raise ValueError("not a list")
        return [check(match.group(1), item) for item in value]
    if type_name == "bool" and isinstance(value, bool):
        return value
    if type_name == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if type_name == "float" and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if type_name == "str" and isinstance(value, str):
        return value
    raise ValueError(f"a {type(value).__name__} is not a {type_name}")
