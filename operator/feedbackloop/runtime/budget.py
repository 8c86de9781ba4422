"""A client-side request budget for the engine's Kubernetes API client: client-go's token bucket (QPS + burst).

Why: a replica that takes over a dead replica's loops (sharding) or starts cold reconciles hundreds of them at
once; on a saturated API server that burst made every replica's own Lease renewal time out, and all of them
exited together (a restart storm). Each replica now sends at most `burst` requests at once and `qps` a second
after that, as client-go's controllers do (Argo CD's defaults: 50 and 100). The Lease has its own client and
no budget: a renewal never waits behind the engine.

Written here rather than taken from a rate-limit library: the calls run in worker threads (a blocking wait),
and the wait must stay inside the leader's term (runtime/kube.fence_requests refuses a request whose wait
outlives it) -- the bucket only says how long to wait; the fence decides whether to.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RequestBudget:
    def __init__(self, qps: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if qps <= 0 or burst < 1:
            raise ValueError(f"a request budget needs qps > 0 and burst >= 1, got {qps} and {burst}")
        self.qps, self.burst, self.clock = float(qps), burst, clock
        self._tokens = float(burst)
        self._stamp = clock()
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Take one request's token: the seconds to wait before sending it (0 within the burst). Tokens are never
        given back, so concurrent callers queue in the order they reserved."""
        with self._lock:
            now = self.clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.qps)
            self._stamp = now
            self._tokens -= 1.0
            return max(0.0, -self._tokens / self.qps)
