"""Coercion of values, from YAML or override strings, to the declared type of their field.

`5e-7` is a float even though YAML 1.1 reads it as a string; `true/false/yes/no/on/off/1/0` are
booleans; `null`/`none`/`~` set an optional field to None; a list is YAML flow (`[a, b]`) or
comma-separated (`a,b`). The required marker `???` passes through unchanged.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Mapping
from typing import Any

import yaml

from ngrpo.config.schema import MISSING
from ngrpo.utils.errors import NgrpoError

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NULL = {"null", "none", "~"}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """`value` (from YAML or an override string) as a `tp`, or an error naming `key`."""
    if value == MISSING:
        return MISSING
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in _NULL):
            return None
        return _coerce(key, value, inner[0])
    if value is None:
        raise NgrpoError(f"{key} cannot be null; expected {_type_name(tp)}")
    if origin is list:
        if isinstance(value, str):
            text = value.strip()
            value = (
                yaml.safe_load(text)
                if text.startswith("[")
                else [part.strip() for part in text.split(",") if part.strip()]
            )
        if not isinstance(value, list):
            raise NgrpoError(f"{key} must be a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", item, args[0]) for i, item in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, Mapping):
            raise NgrpoError(f"{key} must be a mapping (key: value), got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise NgrpoError(f"{key} must be a boolean (true/false), got {value!r}")
    if tp is int:
        number = value
        if isinstance(value, str):
            try:
                number = int(value.strip())
            except ValueError:
                try:
                    number = float(value.strip())  # "1e3"
                except ValueError:
                    raise NgrpoError(f"{key} must be an integer, got {value!r}") from None
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise NgrpoError(f"{key} must be an integer, got {value!r}")
        if isinstance(number, float) and not (math.isfinite(number) and number.is_integer()):
            raise NgrpoError(f"{key} must be an integer, got {value!r}")
        return int(number)
    if tp is float:
        if isinstance(value, bool):
            raise NgrpoError(f"{key} must be a number, got {value!r}")
        try:
            number = float(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError):
            raise NgrpoError(f"{key} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise NgrpoError(f"{key} must be a finite number, got {value!r}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise NgrpoError(f"{key} must be a string, got {value!r} (quote it in YAML)")
        return value
    raise TypeError(f"config field {key} has an unsupported type {tp!r}")  # a bug in the schema
