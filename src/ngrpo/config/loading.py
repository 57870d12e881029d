"""Loading a config: YAML file or mapping, then `key.sub=value` overrides, then validation.

`load_config`: a YAML file (a path, or the name of a config shipped in `ngrpo/configs/`, e.g.
`tiny_ngrpo`) is flattened to dotted keys, then the command-line overrides (`train.steps=3`,
`seed=5`) are applied in order, then the result is validated (`ngrpo.config.validation`). Keys may
be aliases (`ngrpo.config.aliases`); values are coerced to the declared type of their field
(`ngrpo.config.coercion`). Within one YAML file, setting a key twice through two names is an
error; on the command line a later override wins.

The resolved config is written with `save_config` and loads back to an equal `TrainConfig`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ngrpo.config.aliases import _NULL_MEANS, _VALUE_CANONICALIZERS, ALIASES
from ngrpo.config.coercion import _NULL, _coerce
from ngrpo.config.schema import (
    MISSING,
    TrainConfig,
    _flatten,
    _schema,
    _sections,
    config_to_dict,
    set_field,
)
from ngrpo.config.validation import _check_named, validate_config
from ngrpo.utils.errors import NgrpoError
from ngrpo.utils.io import write_text_atomically

CONFIG_DIR = Path(__file__).parent.parent / "configs"  # configs shipped with the package


# ---------------------------------------------------------------------------------------------
# Applying dotted keys
# ---------------------------------------------------------------------------------------------


def _unknown_key(key: str, source: str) -> NgrpoError:
    known = [*_schema(), *ALIASES]
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    head = key.rpartition(".")[0]
    while head and head not in _sections():  # the innermost section the key names
        head = head.rpartition(".")[0]
    if close:
        hint = f"did you mean {' or '.join(close)}?"
    elif head in _sections():
        fields = [f.name for f in dataclasses.fields(_sections()[head])]
        hint = f"valid keys in section {head!r}: {', '.join(fields)}"
    else:
        top = [f.name for f in dataclasses.fields(TrainConfig)]
        hint = f"valid top-level keys and sections: {', '.join(top)}"
    return NgrpoError(f"unknown config key {key!r} ({source}); {hint}")


def _canonical_key(key: str, source: str) -> str:
    key = ALIASES.get(key, key)
    if key in _sections():
        raise NgrpoError(f"{key} is a section ({source}); set its keys, e.g. {key}.<key>=value")
    if key not in _schema():
        raise _unknown_key(key, source)
    return key


def _set(cfg: TrainConfig, key: str, value: Any) -> None:
    """Set canonical dotted `key` to `value`, coerced to the field's type."""
    null = value is None or (isinstance(value, str) and value.strip().lower() in _NULL)
    if null and key in _NULL_MEANS:  # a null that has a meaning for this key
        value = copy.deepcopy(_NULL_MEANS[key])
    value = _coerce(key, value, _schema()[key])
    if key in _VALUE_CANONICALIZERS and value != MISSING:
        _check_named(key, _VALUE_CANONICALIZERS[key], value)
        value = _VALUE_CANONICALIZERS[key](value)
    set_field(cfg, key, value)


def apply_mapping(cfg: TrainConfig, tree: Mapping, source: str = "config") -> TrainConfig:
    """Apply a (nested or dotted) mapping of settings to `cfg` in place; returns `cfg`."""
    seen: dict[str, str] = {}
    for key, value in _flatten(tree).items():
        canonical = _canonical_key(key, source)
        if canonical in seen:
            raise NgrpoError(
                f"{seen[canonical]} and {key} both set {canonical} ({source}); keep one"
            )
        seen[canonical] = key
        _set(cfg, canonical, value)
    return cfg


def parse_override(text: str) -> tuple[str, str]:
    """`key.sub=value` -> (key, value). The value is kept as a string for type coercion."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise NgrpoError(f"override {text!r} must look like key.sub=value (e.g. train.steps=3)")
    return key.strip(), value


def apply_overrides(cfg: TrainConfig, overrides: Sequence[str]) -> TrainConfig:
    """Apply `key.sub=value` strings to `cfg` in place, in order (a later one wins); returns it."""
    for text in overrides:
        key, value = parse_override(text)
        _set(cfg, _canonical_key(key, f"override {text!r}"), value)
    return cfg


# ---------------------------------------------------------------------------------------------
# Loading and saving
# ---------------------------------------------------------------------------------------------


def shipped_configs() -> list[str]:
    """Names of the configs shipped in the package (`tiny_ngrpo`, …)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config_path(name_or_path: str | os.PathLike) -> Path:
    """An existing file path, or the shipped config of that name (with or without `.yaml`)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    stem = path.name.removesuffix(".yaml").removesuffix(".yml")
    shipped = CONFIG_DIR / f"{stem}.yaml"
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    raise NgrpoError(
        f"config {str(name_or_path)!r} not found: it is neither a file nor a shipped config "
        f"({', '.join(shipped_configs())})"
    )


def _read_yaml(path: Path) -> Mapping:
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise NgrpoError(f"{path}: not valid YAML: {err}") from None
    if tree is None:
        return {}
    if not isinstance(tree, Mapping):
        raise NgrpoError(
            f"{path}: the top level must be a mapping of keys, got {type(tree).__name__}"
        )
    return tree


def load_config(
    source: str | os.PathLike | Mapping | None = None,
    overrides: Sequence[str] = (),
    validate: bool = True,
) -> TrainConfig:
    """Defaults ← YAML file / shipped name / mapping ← overrides, then `validate_config`."""
    cfg = TrainConfig()
    if isinstance(source, Mapping):
        apply_mapping(cfg, source)
    elif source is not None:
        path = resolve_config_path(source)
        apply_mapping(cfg, _read_yaml(path), source=str(path))
    apply_overrides(cfg, overrides)
    return validate_config(cfg) if validate else cfg


def save_config(cfg: TrainConfig, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML (atomically); `load_config(path)` gives it back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "# Resolved ngrpo config: `ngrpo train --config THIS_FILE` reproduces the run.\n"
    text += yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True)
    write_text_atomically(path, text)
    return path
