"""kopf wiring: the watch feeds the engine; the engine decides and acts. Nothing else lives here.

No create/update handlers: kopf would store its progress in annotations on the user's objects, and
the engine already reacts to every watch event (a new generation or request annotation wakes it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

import kopf

from feedbackloop.core import api, resources, sharding
from feedbackloop.core.settings import admin_settings_from_env
from feedbackloop.runtime import egress_net, leader, metrics, shards
from feedbackloop.runtime.budget import RequestBudget
from feedbackloop.runtime.engine import Engine, Settings
from feedbackloop.runtime.kube import Kube, load_config


def settings_from_env() -> Settings:
    settings = Settings(admin=admin_settings_from_env(os.environ))  # a bad value stops the operator, named
    if os.environ.get("MFL_STATUS_REFRESH_SECONDS"):
        settings.status_refresh_seconds = float(os.environ["MFL_STATUS_REFRESH_SECONDS"])
    if os.environ.get("MFL_ACTIVE_RECONCILE_SECONDS"):
        settings.active_reconcile_seconds = float(os.environ["MFL_ACTIVE_RECONCILE_SECONDS"])
    if os.environ.get("MFL_TRAINER_EXTRA_CONFIG"):  # test hook: e.g. {"labelNoise": 0.4}
        settings.job_extra_config = json.loads(os.environ["MFL_TRAINER_EXTRA_CONFIG"])
    return settings


@kopf.on.startup()
async def start_engine(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.networking.request_timeout = 60
    load_config(os.environ.get("KUBECONFIG"))
    engine_settings = settings_from_env()
    admin = engine_settings.admin
    kube = Kube(RequestBudget(admin.api_qps, admin.api_burst))  # a takeover's burst must not drown the API server
    fence = leader.Fence(kube)  # the engine's API calls pass only while this replica leads (or holds its shard)
    # Before any tenant's URL is used: the admin's egress allowance, and the API server's addresses to refuse.
    egress_net.install(await asyncio.to_thread(egress_net.operator_policy, engine_settings.admin.egress_allow))
    election = leader.election_from_env(os.environ)
    sharded = shards.sharding_from_env(os.environ)
    # Only the operator's own Deployments are sent (selected by the API server, not filtered here); sharded,
    # only those of this replica's loops (their owner labels them when it takes a loop: engine._adopt).
    deployments = f"app.kubernetes.io/managed-by={resources.MANAGED_BY}"
    if sharded.enabled:
        if not election.enabled:
            raise kopf.PermanentError("MFL_SHARDING=true needs leader election (POD_NAME, MFL_LEADER_ELECTION)")
        engine_settings.shard = election.identity
        settings.watching.label_selectors[api.GROUP, api.PLURAL] = sharding.shard_selector(election.identity)
        deployments += f",{sharding.SHARD_LABEL}={election.identity}"
    settings.watching.label_selectors["apps", "deployments"] = deployments
    memo.engine = Engine(fence, engine_settings)  # every replica observes: the watch feeds it
    if sharded.enabled:  # each replica acts on its shard, fenced by its own Lease; the leader coordinates
        timeout = election.timing.renew_deadline_seconds  # a Lease request may take what a renewal may
        replica = leader.replica_election(election)
        own = leader.Elector(leader.KubeLease(replica.name, replica.namespace, timeout), replica)
        work = leader.lead(own, memo.engine.run, fence, gauge=metrics.REPLICA_LEASE)
        coordinator_fence = leader.Fence(Kube())  # its own client: its moves never wait behind the engine's budget
        coordinator = shards.Coordinator(
            coordinator_fence, election, sharded, lambda name: leader.KubeLease(name, election.namespace, timeout)
        )
        lease = leader.KubeLease(election.name, election.namespace, timeout)
        memo.coordinator_task = asyncio.create_task(
            leader.lead(leader.Elector(lease, election), coordinator.run, coordinator_fence), name="shard-coordinator"
        )
    elif election.enabled:  # only the leader runs the engine: it alone acts and writes status
        lease = leader.KubeLease(election.name, election.namespace, election.timing.renew_deadline_seconds)
        work = leader.lead(leader.Elector(lease, election), memo.engine.run, fence)
    else:
        work = leader.unelected(memo.engine.run, fence)
    memo.engine_task = asyncio.create_task(work, name="feedbackloop-engine")


@kopf.on.cleanup()
async def stop_engine(memo: kopf.Memo, **_: Any) -> None:
    """Stop the engine, then release the Lease (inside `lead`): the standby takes over at once. Sharded: the
    engine first (its replica Lease released: the coordinator moves its loops at once), then the coordinator."""
    for name in ("engine_task", "coordinator_task"):
        task = getattr(memo, name, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


# async: they run on the event loop with the engine (a sync handler would run in kopf's thread pool,
# and asyncio's Event and tasks are not thread-safe).
@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
async def loop_changed(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo.engine.observe_loop(event.get("type"), event["object"])


@kopf.on.event("apps", "v1", "deployments", labels={"app.kubernetes.io/managed-by": resources.MANAGED_BY})
async def deployment_changed(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo.engine.observe_deployment(event.get("type"), event["object"])


@kopf.on.probe(id="loops")
def loops_known(memo: kopf.Memo, **_: Any) -> int:
    return len(memo.engine.loops)
