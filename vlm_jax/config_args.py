"""`get_config(arg)` helpers: parse "k1=v1,k2=v2" against typed defaults (big_vision style)."""

from __future__ import annotations

import ml_collections


def check_keys(section, known: set[str], name: str) -> None:
    """Raises if `section` (a ConfigDict or dict) has keys outside `known`, naming config.NAME."""
    unknown = set(section.keys()) - set(known)
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in config.{name}; known: {sorted(known)}")


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Values of `arg` cast to the type of each default; an unknown key is an error."""
    out = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
        kind = type(defaults[key])
        if kind is bool:
            out[key] = value.strip().lower() in ("1", "true", "yes", "")
        else:
            out[key] = kind(value.strip())
    return out
