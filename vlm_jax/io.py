"""Small file helpers every part of the package shares: JSON written atomically, read with the
file named in any error."""

from __future__ import annotations

import json
import os
from typing import Any


def write_json_atomic(path: str, obj: Any, indent: int | None = 2) -> None:
    """Writes JSON to a temporary file beside `path`, then renames it over `path`, so a reader
    never sees half a file and a kill leaves the old one (on gs://, one object write is atomic
    already)."""
    text = json.dumps(obj, indent=indent, sort_keys=True, default=str)
    if "://" in path:
        from etils import epath
        epath.Path(path).write_text(text)
        return
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def read_json(path: str) -> Any:
    """The JSON in `path`; a malformed file is a ValueError naming it and the position."""
    if "://" in path:
        from etils import epath
        text = epath.Path(path).read_text()
    else:
        with open(path) as f:
            text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column "
                         f"{e.colno})") from None
