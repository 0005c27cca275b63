"""Config helpers: sections checked against their locked defaults, and `get_config(arg)`
strings "k1=v1,k2=v2" parsed against typed defaults (big_vision style)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections


def merge_defaults(section: Any, defaults: ml_collections.ConfigDict, name: str,
                   whole: Sequence[str] = (), label: str = "") -> ml_collections.ConfigDict:
    """`section` (a ConfigDict or dict) over a locked copy of `defaults`; returns the merge.

    The defaults are the only keys, nested sections included: a key they lack raises
    ValueError naming it (`unknown key(s) [...] in config.NAME.SUB`), and so does a value
    their type cannot take. `whole`: dotted keys whose values are taken as given, any type
    and any keys (free mappings such as `eval.tasks`). `label` words the error
    ("unknown data config key(s)").
    """
    full = copy.deepcopy(defaults)
    full.lock()
    unknown: dict[str, list[str]] = {}

    def fill(into: ml_collections.ConfigDict, given: Any, where: str) -> None:
        for key, value in dict(given).items():
            path = where + key
            if path in whole:
                with into.unlocked():
                    if key in into:
                        del into[key]
                    into[key] = value
            elif isinstance(into.get(key), ml_collections.ConfigDict) and isinstance(
                    value, (Mapping, ml_collections.ConfigDict)):
                fill(into[key], value, path + ".")
            else:
                try:
                    into[key] = value
                except KeyError:  # the locked defaults have no such key
                    unknown.setdefault(where, []).append(key)
                except TypeError as e:
                    raise ValueError(f"config.{name}.{path}: {e}") from None

    fill(full, section, "")
    if unknown:
        where, keys = next(iter(unknown.items()))
        known = full
        for part in filter(None, where.split(".")):
            known = known[part]
        at = ".".join(filter(None, ["config", name, where[:-1]]))
        raise ValueError(f"unknown {label}key(s) {sorted(keys)} in {at} "
                         f"({', '.join(f'{at}.{k}' for k in sorted(keys))}); known: "
                         f"{sorted(known.keys())}")
    return full


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Values of `arg` cast to the type of each default; an unknown key is an error."""
    out = ml_collections.ConfigDict(defaults)
    out.lock()
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in out:
            raise ValueError(f"unknown key {key!r} in the config argument {arg!r}; known: "
                             f"{sorted(defaults)}")
        kind = type(defaults[key])
        if kind is bool:
            out[key] = value.strip().lower() in ("1", "true", "yes", "")
        else:
            out[key] = kind(value.strip())
    return out
