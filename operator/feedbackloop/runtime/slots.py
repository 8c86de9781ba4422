"""Fair shares of a bounded resource (Prometheus queries, webhook connections) between tenants.

A `Lane` holds three kinds of slots: per tenant, per host and in all. Work takes them in that order, each
from a FIFO queue that hands a freed slot straight to the next waiter (no barging):

- a tenant waits for its own slots first, holding nothing anyone else needs: its queued work never occupies
  a host's slot or a slot in all, so one tenant can never hold more than `per_tenant` of anything;
- work waits for a host holding only its tenant's slot, so a black-hole host occupies at most `per_host`
  slots in all, however many tenants point at it;
- so every queue for a shared slot (a host's, the lane's) holds at most `per_tenant` entries per tenant:
  served in order, that is round robin between tenants, never one tenant's backlog ahead of another's.

The order is the same for everyone, so no two holders can wait on each other (no deadlock). A key's entry
exists only while a slot of it is held or waited for: the tables do not grow with every tenant ever seen.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

ALL = ""  # the one key of a lane's slots in all


class KeyedSlots:
    """At most `limit` holders per key, waiters served first come first served."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a limit of {limit} slots would never let anything run: use 1 or more")
        self.limit = limit
        self._held: dict[str, int] = {}
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}

    def held(self, key: str) -> int:
        return self._held.get(key, 0)

    def waiting(self, key: str) -> int:
        return len(self._waiting.get(key, ()))

    async def acquire(self, key: str) -> None:
        if self._held.get(key, 0) < self.limit and not self._waiting.get(key):
            self._held[key] = self._held.get(key, 0) + 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._waiting.setdefault(key, deque())
        queue.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(key)  # the slot was handed over just as the waiter was cancelled: pass it on
            else:
                self._forget(key, future)
            raise

    def release(self, key: str) -> None:
        queue = self._waiting.get(key)
        while queue:
            future = queue.popleft()
            if not queue:
                del self._waiting[key]
            if not future.done():
                future.set_result(None)  # the slot passes to the next waiter: the count held stays
                return
        held = self._held.get(key, 0) - 1
        if held > 0:
            self._held[key] = held
        else:
            self._held.pop(key, None)

    def _forget(self, key: str, future: asyncio.Future[None]) -> None:
        queue = self._waiting.get(key)
        if queue is None:
            return
        try:
            queue.remove(future)
        except ValueError:
            pass
        if not queue:
            del self._waiting[key]


class Grant:
    """The slots one piece of work holds; `release` gives them back (once, whoever calls it)."""

    def __init__(self, taken: list[tuple[KeyedSlots, str]]) -> None:
        self._taken = taken

    def release(self) -> None:
        taken, self._taken = self._taken, []
        for slots, key in reversed(taken):
            slots.release(key)


class Lane:
    """Slots for one kind of work: `per_tenant` for one tenant, `per_host` to one host, `total` in all."""

    def __init__(self, name: str, total: int, per_tenant: int, per_host: int) -> None:
        self.name = name
        self.tenants = KeyedSlots(per_tenant)
        self.hosts = KeyedSlots(per_host)
        self.all = KeyedSlots(total)

    async def acquire(self, tenant: str, host: str) -> Grant:
        """Waits for the tenant's slot, then the host's, then one in all (the order is the fairness)."""
        taken: list[tuple[KeyedSlots, str]] = []
        try:
            for slots, key in ((self.tenants, tenant), (self.hosts, host), (self.all, ALL)):
                await slots.acquire(key)
                taken.append((slots, key))
        except BaseException:
            Grant(taken).release()
            raise
        return Grant(taken)

    @asynccontextmanager
    async def slot(self, tenant: str, host: str) -> AsyncIterator[None]:
        grant = await self.acquire(tenant, host)
        try:
            yield
        finally:
            grant.release()
