"""How many threads the numeric libraries may use.

OpenMP and BLAS default to one thread per host CPU. In a pod with a CPU limit that oversubscribes the
quota and the spinning threads get throttled (a small fit can take 10x longer), so the budget is the
cgroup quota unless ``MFL_TRAINER_THREADS`` says otherwise (a Job can fill it from ``limits.cpu``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

from threadpoolctl import threadpool_limits

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def thread_budget(env: Mapping[str, str] | None = None, cpu_max: Path = CGROUP_CPU_MAX) -> int:
    env = os.environ if env is None else env
    configured = env.get("MFL_TRAINER_THREADS", "").strip()
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_quota(cpu_max)
    return max(1, min(available, math.ceil(quota))) if quota else available


def _cgroup_quota(cpu_max: Path) -> float | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` ("<quota> <period>" or "max <period>")."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def limit_threads(threads: int) -> threadpool_limits:
    return threadpool_limits(limits=threads)
