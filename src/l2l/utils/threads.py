"""CPU threads that degrade gracefully on a shared machine.

torch's OpenMP threads spin-wait by default: with another CPU-bound process on the machine, a thread whose core
is taken burns its time slice waiting for the others, and small steps get several times slower. The console
script therefore asks OpenMP for a passive wait policy (unless the user set one), and `free_cores` picks the
intra-op thread count from the cores that are idle when a run starts (docs/speed.md has the measurements).
"""

from __future__ import annotations

import os


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


def free_cores() -> int:
    """Usable cores minus the ones other processes keep busy (the 1-minute load average), at least 1."""
    cores = usable_cores()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this platform
        return cores
    return max(1, min(cores, cores - int(load + 0.5)))
