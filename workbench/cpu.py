"""How many CPU threads torch uses: every core this process may run on, unless the user said.

torch picks its thread count from the machine's physical cores, which in a container can be far
more than the process is allowed (an affinity mask or a cgroup CPU quota), and then
oversubscribes them. The command line and the app call :func:`use_available_cpus` once at start;
``OMP_NUM_THREADS`` or ``WORKBENCH_THREADS`` in the environment win over it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch


def available_cpus() -> int:
    """Cores this process may use: its affinity mask, capped by a cgroup v2 CPU quota."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        count = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


def use_available_cpus() -> int:
    """Set torch's intra-op threads to ``WORKBENCH_THREADS``, else leave ``OMP_NUM_THREADS``
    alone when set, else use :func:`available_cpus`; returns the count in use."""
    wanted = os.environ.get("WORKBENCH_THREADS")
    if wanted:
        torch.set_num_threads(max(1, int(wanted)))
    elif not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(available_cpus())
    return torch.get_num_threads()
