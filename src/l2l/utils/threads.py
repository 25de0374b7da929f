"""CPU threads that degrade gracefully on a shared machine.

torch's OpenMP threads spin-wait by default: with another CPU-bound process on the machine, a thread whose core
is taken burns its time slice waiting for the others, and small steps get several times slower. The console
script therefore asks OpenMP for a passive wait policy (unless the user set one), and `free_cores` picks the
intra-op thread count from the cores that are idle when a run starts (docs/speed.md has the measurements).
"""

from __future__ import annotations

import os
import time


def prefer_passive_wait() -> None:
    """Ask OpenMP threads to sleep rather than spin while waiting; a no-op if the user chose a policy.

    Only effective before torch is first imported (OpenMP reads its environment when it loads)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _proc_stat_busy(window: float) -> float | None:
    """Cores busy machine-wide over the next `window` seconds, from /proc/stat (None where it cannot be read)."""
    def snapshot() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as fh:
            ticks = [int(v) for v in fh.readline().split()[1:9]]
        return sum(ticks), ticks[3] + ticks[4]  # all, idle + iowait

    try:
        total0, idle0 = snapshot()
        time.sleep(window)
        total1, idle1 = snapshot()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (1.0 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1)


def others_busy(window: float = 0.3) -> float:
    """Cores other processes keep busy now: /proc/stat sampled while this process sleeps, so its own earlier work
    (a demo's previous stage, a grid's previous cell) does not count, as it would in the 1-minute load average;
    the load average where /proc/stat is missing."""
    busy = _proc_stat_busy(window)
    if busy is not None:
        return busy
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this platform
        return 0.0


def free_cores() -> int:
    """Usable cores minus the ones other processes keep busy, at least 1."""
    cores = usable_cores()
    return max(1, min(cores, cores - int(others_busy() + 0.5)))
