"""The egress policy (core/egress.py) where connections are made: on the address each one is about to use.

A check of the URL's text is not enough: a name may resolve to a public address when the spec is read and to
127.0.0.1 when the operator connects (DNS rebinding), and only the connection knows which address it uses. So
both HTTP stacks the operator speaks to tenants' URLs with resolve the name themselves, judge every address,
and connect only to an allowed one; when none is allowed the request fails with `EgressRefused`, whose message
names the address, what it is and the setting that would allow it.

    aiohttp (webhooks, confirmPromotion)   connector(kind): a TCPConnector whose resolver and host lookup
                                           (IP literals too, which aiohttp does not resolve) drop refused
                                           addresses
    requests (prometheus-api-client)       guard(session, kind): every adapter replaced by one whose
                                           connections resolve, judge, and connect to the checked address;
                                           TLS still verifies the URL's host name (SNI and the certificate)

The policy in force is the process's (`install`, at the operator's start, from the admin's MFL_EGRESS_ALLOW);
until then, and in any process that installs none, it is the default: nothing allowed beyond it. Proxies from
the environment are not used for tenants' URLs: a proxy would connect where this check cannot see.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import requests
from aiohttp.abc import AbstractResolver, ResolveResult
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import connection as urllib3_connection

from feedbackloop.core import egress
from feedbackloop.core.egress import Address, EgressPolicy, Kind
from feedbackloop.core.settings import EgressAllowance

log = logging.getLogger(__name__)

_policy = EgressPolicy()


class EgressRefused(Exception):
    """A connection the egress policy refused: no allowed address for the URL's host."""

    def __init__(self, host: str, address: Address, what: str) -> None:
        super().__init__(egress.refusal_text(address, what))
        self.host, self.address, self.what = host, address, what


def install(policy: EgressPolicy) -> None:
    """The policy every later connection of this process is judged by."""
    global _policy
    _policy = policy


def current() -> EgressPolicy:
    """The policy in force."""
    return _policy


@contextmanager
def installed(policy: EgressPolicy) -> Iterator[None]:
    """`policy` in force for a block (tests), the previous one after."""
    before = _policy
    install(policy)
    try:
        yield
    finally:
        install(before)


def operator_policy(
    allow: EgressAllowance, env: Mapping[str, str] | None = None, api_urls: Sequence[str] | None = None
) -> EgressPolicy:
    """The policy of the running operator: the admin's allowance, and the API server's addresses to refuse
    (the `kubernetes.default` Service's ClusterIP from KUBERNETES_SERVICE_HOST, and the host the operator's own
    Kubernetes client talks to, resolved now)."""
    env = os.environ if env is None else env
    if api_urls is None:
        api_urls = _kube_client_hosts()
    hosts = [env.get("KUBERNETES_SERVICE_HOST", ""), *(urlsplit(url).hostname or "" for url in api_urls)]
    addresses: set[Address] = set()
    for host in filter(None, hosts):
        addresses.update(_resolve_quietly(host))
    allowed = [str(n) for n in allow.networks] + list(allow.hosts)
    log.info(
        "egress policy (docs/security.md): the default%s; the API server at %s refused",
        f", and {egress.SETTING} allows {', '.join(allowed)}" if allowed else f" ({egress.SETTING} is empty)",
        ", ".join(sorted(map(str, addresses))) or "(no address known)",
    )
    return EgressPolicy(allow=allow, api_server=frozenset(addresses))


def _kube_client_hosts() -> list[str]:
    try:
        from kubernetes import client

        return [str(client.Configuration.get_default_copy().host)]
    except Exception:  # noqa: BLE001 - no configuration loaded: nothing more to refuse than the Service's
        return []


def _resolve_quietly(host: str) -> set[Address]:
    literal = egress.literal_address(host.strip("[]"))
    if literal is not None:
        return {literal}
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as error:
        log.warning("the API server's host %s does not resolve (%s): its addresses are not refused by it", host, error)
        return set()
    return {_address(str(info[4][0])) for info in infos}


def _address(text: str) -> Address:
    return ipaddress.ip_address(text.split("%", 1)[0])  # an IPv6 zone id (fe80::1%eth0) is no part of it


def checked(kind: Kind, host: str, addresses: Iterable[Address], policy: EgressPolicy | None = None) -> list[Address]:
    """The addresses a connection of `kind` to `host` may use, in their order; EgressRefused when none."""
    judge = policy or _policy
    allowed: list[Address] = []
    refused: tuple[Address, str] | None = None
    for address in dict.fromkeys(addresses):
        what = egress.refusal(kind, host, address, judge)
        if what is None:
            allowed.append(address)
        elif refused is None:
            refused = (address, what)
    if refused is None:
        return allowed
    if not allowed:
        raise EgressRefused(host, *refused)
    log.info("%s: not connecting to %s (%s), only to %s", host, refused[0], refused[1], allowed)
    return allowed


# --- aiohttp ------------------------------------------------------------------------------------------------


def _checked_results(kind: Kind, host: str, results: list[ResolveResult]) -> list[ResolveResult]:
    allowed = set(checked(kind, host, (_address(r["host"]) for r in results)))
    return [r for r in results if _address(r["host"]) in allowed]


class EgressResolver(AbstractResolver):
    """A resolver answering only addresses the policy allows; by default aiohttp's ThreadedResolver (the
    system's getaddrinfo, as the requests side uses: the Pod's resolv.conf and search domains, whatever
    optional resolver library is installed)."""

    def __init__(self, kind: Kind, inner: AbstractResolver | None = None) -> None:
        self.kind = kind
        self._inner = inner or aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return _checked_results(self.kind, host, await self._inner.resolve(host, port, family))

    async def close(self) -> None:
        await self._inner.close()


class EgressConnector(aiohttp.TCPConnector):
    """A TCPConnector that connects only to addresses the policy allows: names through EgressResolver, and
    IP literals (which aiohttp never hands to a resolver) checked in its host lookup, as is what its DNS
    cache answers."""

    def __init__(self, kind: Kind, **kwargs: Any) -> None:
        self._egress_kind = kind
        self._egress_resolver = EgressResolver(kind, kwargs.pop("resolver", None))
        super().__init__(resolver=self._egress_resolver, **kwargs)

    async def _resolve_host(self, host: str, port: int, traces: Any = None) -> list[ResolveResult]:
        return _checked_results(self._egress_kind, host, await super()._resolve_host(host, port, traces=traces))

    async def close(self, *, abort_ssl: bool = False) -> None:
        try:
            await super().close(abort_ssl=abort_ssl)
        finally:
            await self._egress_resolver.close()


def connector(kind: Kind, **kwargs: Any) -> aiohttp.TCPConnector:
    """The connector of every aiohttp session that connects to a tenant's URL (kwargs: TCPConnector's)."""
    return EgressConnector(kind, **kwargs)


# --- requests / urllib3 (prometheus-api-client) -------------------------------------------------------------


class _CheckedConnect:
    """urllib3's `_new_conn`, resolving the host itself and connecting only to an address the policy allows.
    The TLS layer above (HTTPSConnection.connect) still sends and verifies the URL's host name."""

    egress_kind: Kind = egress.PROMETHEUS
    host: str
    port: int
    _dns_host: str
    timeout: Any
    source_address: tuple[str, int] | None
    socket_options: Any

    def _new_conn(self) -> socket.socket:
        try:
            infos = socket.getaddrinfo(
                self._dns_host.strip("[]"), self.port, urllib3_connection.allowed_gai_family(), socket.SOCK_STREAM
            )
        except socket.gaierror as error:
            raise NameResolutionError(self.host, self, error) from error  # type: ignore[arg-type]
        addresses = checked(self.egress_kind, self.host, (_address(str(info[4][0])) for info in infos))
        last: OSError | None = None
        for address in addresses:
            try:
                sock = urllib3_connection.create_connection(
                    (str(address), self.port),
                    self.timeout,
                    source_address=self.source_address,
                    socket_options=self.socket_options,
                )
            except OSError as error:
                last = error
                continue
            sys.audit("http.client.connect", self, self.host, self.port)
            return sock
        if isinstance(last, TimeoutError):
            raise ConnectTimeoutError(
                self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})"
            ) from last
        raise NewConnectionError(self, f"Failed to establish a new connection: {last}") from last  # type: ignore[arg-type]


class CheckedHTTPConnection(_CheckedConnect, HTTPConnection):
    pass


class CheckedHTTPSConnection(_CheckedConnect, HTTPSConnection):
    pass


class _CheckedHTTPPool(HTTPConnectionPool):
    ConnectionCls = CheckedHTTPConnection


class _CheckedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = CheckedHTTPSConnection


class EgressAdapter(HTTPAdapter):
    """A requests adapter whose connections are checked (CheckedHTTP(S)Connection); no proxy."""

    def __init__(self, kind: Kind, **kwargs: Any) -> None:
        self.egress_kind = kind
        super().__init__(**kwargs)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        http = type("Pool", (_CheckedHTTPPool,), {"ConnectionCls": _kind_of(CheckedHTTPConnection, self.egress_kind)})
        https = type(
            "Pool", (_CheckedHTTPSPool,), {"ConnectionCls": _kind_of(CheckedHTTPSConnection, self.egress_kind)}
        )
        self.poolmanager.pool_classes_by_scheme = {"http": http, "https": https}

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        raise EgressProxyRefused(f"no proxy for a tenant's URL ({proxy}): it would connect where the check cannot see")


class EgressProxyRefused(Exception):
    pass


def _kind_of(cls: type[_CheckedConnect], kind: Kind) -> type[_CheckedConnect]:
    return cls if cls.egress_kind == kind else type(cls.__name__, (cls,), {"egress_kind": kind})


def guard(session: requests.Session, kind: Kind, **adapter_kwargs: Any) -> requests.Session:
    """`session` connecting through EgressAdapter only (every adapter it had, e.g. one mounted on the URL's
    prefix, replaced), with no proxy or .netrc from the environment."""
    session.trust_env = False
    session.proxies.clear()
    session.adapters.clear()
    adapter = EgressAdapter(kind, **adapter_kwargs)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session
