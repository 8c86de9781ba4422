"""Running a server process: listen, load in the background, stop gracefully on SIGTERM (shared by
`mfl-server` and `mfl-sidecar`)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable

from aiohttp import web

from . import jsonio
from .base import FeedbackServer
from .config import ConfigError, ServerConfig, from_env

log = logging.getLogger("mfl_server")
SHUTDOWN_TIMEOUT = 20.0  # seconds for in-flight requests; the pod's grace period is 30


async def serve(server: FeedbackServer, stop: asyncio.Event | None = None) -> None:
    """Runs until SIGTERM/SIGINT (or ``stop`` is set), then shuts down gracefully."""
    config = server.config
    runner = web.AppRunner(server.web_app(), handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    stop = stop or asyncio.Event()
    _on_signals(stop)
    background = [asyncio.create_task(task) for task in server.background_tasks()]
    try:
        await web.TCPSite(runner, config.host, config.port, backlog=1024).start()
        log.info(
            "listening on %s:%d (json: %s, event loop: %s)",
            config.host,
            config.port,
            jsonio.BACKEND,
            type(asyncio.get_running_loop()).__module__.split(".")[0],
        )
        await stop.wait()
        log.info("stopping: no longer ready, finishing in-flight requests")
        server.shutting_down = True
        await asyncio.sleep(config.shutdown_delay)  # let endpoints drop this pod before we stop listening
        await _drain(runner, server)
    finally:
        for task in background:
            task.cancel()
        await runner.cleanup()  # closes idle connections, cancels what is left
        await server.aclose()
    log.info("stopped")


async def _drain(runner: web.AppRunner, server: FeedbackServer) -> None:
    """Stop accepting, then let running handlers finish before aiohttp closes their connections.

    aiohttp's own cleanup stops reading from every connection at once, so a request whose body was
    still arriving would never complete; waiting here first lets it.
    """
    for site in list(runner.sites):
        await site.stop()
    if not await server.in_flight.wait_idle(SHUTDOWN_TIMEOUT):
        log.error("%d requests still running after %.0f s; cancelling them", server.in_flight.count, SHUTDOWN_TIMEOUT)


def _on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (less per-request overhead), unless MFL_EVENT_LOOP=asyncio."""
    if os.environ.get("MFL_EVENT_LOOP", "").lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_main(make_server: Callable[[ServerConfig], FeedbackServer], prepare: Callable[[ServerConfig], None]) -> int:
    """A console script's body: configuration from the environment, then serve until stopped."""
    logging.basicConfig(
        level=os.environ.get("MFL_LOG_LEVEL", "INFO").upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = from_env()
        server = make_server(config)
    except ConfigError as error:
        log.error("configuration: %s", error)
        return 2
    prepare(config)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(serve(server))
    except OSError as error:  # e.g. the port is taken
        log.error("cannot serve on %s:%d: %s", config.host, config.port, error)
        return 1
    return 0
