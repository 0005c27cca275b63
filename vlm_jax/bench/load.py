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


def settle(threshold: float, max_wait_s: float, poll_s: float = 5.0) -> list[float]:
    """Waits up to `max_wait_s` for the 1-minute load to fall to `threshold` (a benchmark's own
    previous worker keeps it up for a minute or two); returns the load average then."""
    import time

    load, start = load_average(), time.monotonic()
    if load[0] > threshold and max_wait_s > 0:
        print(f"waiting up to {max_wait_s:.0f} s for the load average ({load[0]}) to fall to "
              f"{threshold}", flush=True)
    while load[0] > threshold and time.monotonic() - start < max_wait_s:
        time.sleep(poll_s)
        load = load_average()
    return load
