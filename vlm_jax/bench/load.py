"""The machine's load beside every speed figure: timings under load are not comparable."""

from __future__ import annotations

import os
import warnings


def load_average() -> list[float]:
    """The 1, 5 and 15-minute load averages; a timing without them is not reported."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError as err:
        raise RuntimeError("cannot read the load average (os.getloadavg): speed figures are "
                           "only reported beside it") from err


def warn_if_loaded(load: list[float], what: str) -> None:
    """Warns when the 1-minute load is above 1."""
    if load[0] > 1:
        warnings.warn(f"{what}: load average {load[0]} > 1 on {os.cpu_count()} cores; the "
                      f"timings are noisy", stacklevel=2)
