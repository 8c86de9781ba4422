"""Run the test suite as two tiers side by side: the cluster tier (e2e) and everything else.

    python -m mfl_testbed.tiers [pytest arguments for both tiers...]

Why: the cluster tier spends much of its ~45 minutes waiting (Pods starting, monitoring intervals, canary
pauses), and the rest (~13 minutes, mostly CPU) waits for it in one pytest process. The cluster tier streams its
output; the other tier runs at a lower CPU priority (MFL_TIER_NICE, default 10: the cluster's timing matters
more), writes its own log, and that log is printed whole when both have ended. The exit code is the first
non-zero of the two (e2e first).

Not what CI runs (`make test` is one pytest process): measured on the 2-core machine, the cluster tier keeps
both cores busy often enough that the other tier at nice 10 got a few percent of a core, and its slowest fixture
(the ML-efficacy smoke run, 33 s alone) hit the 600 s test timeout. `make test-tiers` runs it for a machine
with cores to spare.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NICE = int(os.environ.get("MFL_TIER_NICE", "10"))  # the second tier's CPU priority: the cluster's timeouts are real


def tier_commands(args: list[str], root: Path, python: str = sys.executable) -> tuple[list[str], list[str]]:
    """(the cluster tier, the other tier): each its own marker, temp root under `root` (this run's: pytest wipes
    a basetemp, so two runs must never share one) and no shared cache (two sessions)."""
    base = [python, "-m", "pytest", "-p", "no:cacheprovider", *args]
    cluster = [*base, "-m", "e2e", f"--basetemp={root / 'e2e'}"]
    rest = [*base, "-m", "not e2e", f"--basetemp={root / 'rest'}"]
    return cluster, rest


def combined(cluster: int, rest: int) -> int:
    """One exit code: the first failure's; 5 (no tests collected) of one tier alone is not a failure."""
    codes = [code for code in (cluster, rest) if code not in (0, 5)]
    if codes:
        return codes[0]
    return 5 if cluster == rest == 5 else 0


def run(args: list[str]) -> int:
    root = Path(tempfile.mkdtemp(prefix="mfl-tiers-"))
    cluster_command, rest_command = tier_commands(args, root)
    log = root / "rest.log"
    start = time.monotonic()
    with log.open("w") as output:
        rest = subprocess.Popen(rest_command, stdout=output, stderr=subprocess.STDOUT, preexec_fn=lambda: os.nice(NICE))
        print(f"tiers: the non-cluster tests run beside the cluster tier at nice {NICE}; their log: {log}", flush=True)
        try:
            cluster_code = subprocess.call(cluster_command)
            rest_code = rest.wait()
        finally:
            if rest.poll() is None:
                rest.kill()
    print(f"\n{'=' * 30} the non-cluster tier's report {'=' * 30}", flush=True)
    sys.stdout.write(log.read_text(errors="replace"))
    print(f"tiers: cluster {cluster_code}, non-cluster {rest_code}, {time.monotonic() - start:.0f}s", flush=True)
    return combined(cluster_code, rest_code)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
