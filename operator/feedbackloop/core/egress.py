"""Where a tenant's URL may lead the operator: the egress policy, judged on the address a connection is about to use.

A loop names URLs the operator itself connects to: its Prometheus (`spec.monitoring.prometheus.url`), its
webhooks (`spec.notifications[].url`) and its promotion gate (`spec.rollout.confirmPromotion.url`). Without a
policy, a tenant turns the operator into a probe of everything the operator's Pod can reach: the Pod itself, the
node's cloud metadata service, the cluster's API server and every in-cluster Service (confirmPromotion even
answers yes or no). So:

- every kind of URL is refused loopback, link-local and cloud metadata, unspecified, multicast, broadcast and
  reserved addresses, IPv6 forms that tunnel to an IPv4 host through a relay, and the Kubernetes API server's
  own addresses;
- a receiver (webhook, confirmPromotion) is refused private addresses too (RFC 1918, CGNAT, ULA): every
  in-cluster Service is one. A Prometheus may be private: it nearly always is in-cluster.
- The operator's admin allows exceptions (`MFL_EGRESS_ALLOW`, core/settings.py); a loop's spec never can.

The runtime (runtime/egress_net.py) applies `refusal` to every address a connection would use, after its own
DNS lookup (a name that resolves public when the spec is read and to 127.0.0.1 when the connection is made is
refused). The literal spellings a resolver accepts for an address (`http://2130706433/`, `0x7f.1`,
`[::ffff:127.0.0.1]`, trailing dots) are read here too, so the spec is refused when it is parsed (core/api.py).

IPv6 addresses that embed an IPv4 one: an IPv4-mapped address (::ffff:a.b.c.d) is the IPv4 host itself on a
dual-stack socket, and the well-known NAT64 prefix (64:ff9b::/96, RFC 6052) is translated to exactly its IPv4
host by a DNS64/NAT64 gateway (an IPv6-only cluster reaches every IPv4-only webhook this way): both are judged
as the IPv4 address they carry. The others (IPv4-compatible ::a.b.c.d, 6to4 2002::/16, Teredo 2001::/32,
IPv4-translated ::ffff:0:0:0/96, the local-use NAT64 prefix 64:ff9b:1::/48) are deprecated or lead through a
relay to a host this check cannot know: refused outright.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

from feedbackloop.core.settings import EgressAllowance

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Kind = Literal["prometheus", "receiver"]
PROMETHEUS: Kind = "prometheus"
RECEIVER: Kind = "receiver"
SETTING = "MFL_EGRESS_ALLOW"
ADVICE = f"if it is meant, ask the operator's admin to add it to {SETTING}"


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Table = tuple[tuple[str, tuple[Network, ...]], ...]


def _nets(*cidrs: str) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(cidr) for cidr in cidrs)


# Refused for every kind of URL; the first match, in this order, names the address. Metadata first: the
# addresses clouds serve instance credentials on, some outside link-local (Alibaba's is CGNAT, Azure's public).
ALWAYS_REFUSED: Table = (
    ("cloud metadata", _nets("169.254.169.254/32", "169.254.170.2/32", "169.254.170.23/32",
                                       "fd00:ec2::254/128", "fd00:ec2::23/128", "100.100.100.200/32",
                                       "168.63.129.16/32")),
    ("unspecified", _nets("0.0.0.0/8", "::/128")),
    ("loopback", _nets("127.0.0.0/8", "::1/128")),
    ("link-local", _nets("169.254.0.0/16", "fe80::/10")),
    ("multicast", _nets("224.0.0.0/4", "ff00::/8")),
    # IPv6 forms that lead to an IPv4 host through a relay or a deprecated mechanism: whatever they embed.
    ("IPv4-compatible IPv6 (deprecated)", _nets("::/96")),
    ("6to4 (through a relay)", _nets("2002::/16")),
    ("Teredo (through a relay)", _nets("2001::/32")),
    ("IPv4-translated IPv6", _nets("::ffff:0:0:0/96")),
    ("local-use NAT64", _nets("64:ff9b:1::/48")),
    ("broadcast or reserved", _nets("240.0.0.0/4", "192.0.0.0/24", "192.0.2.0/24", "198.18.0.0/15",
                                    "198.51.100.0/24", "203.0.113.0/24", "2001::/23", "2001:db8::/32", "3fff::/20",
                                    "100::/64", "fec0::/10")),
)  # fmt: skip
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# Refused for receivers only: private networks, where every in-cluster Service and Pod lives.
INTERNAL: Table = (
    ("private (RFC 1918)", _nets("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")),
    ("shared (CGNAT 100.64.0.0/10)", _nets("100.64.0.0/10")),
    ("unique local IPv6 (fc00::/7)", _nets("fc00::/7")),
)
API_SERVER = "the Kubernetes API server"
# Names every resolver answers with loopback (RFC 6761, and Debian's /etc/hosts), and the metadata name of GCE.
SPECIAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback", "metadata.google.internal")


@dataclass(frozen=True)
class EgressPolicy:
    """What the operator may connect to for a tenant: the admin's exceptions and the cluster's API addresses."""

    allow: EgressAllowance = field(default_factory=EgressAllowance)
    # The `kubernetes.default` Service's ClusterIP (KUBERNETES_SERVICE_HOST) and the addresses of the API
    # server the operator's client talks to: refused for every kind unless allowed by address.
    api_server: frozenset[Address] = frozenset()


def embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv4-mapped (::ffff:a.b.c.d) or well-known NAT64 (64:ff9b::a.b.c.d) address leads to."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _first(address: Address, table: Table) -> str | None:
    return next((what for what, nets in table if any(address in net for net in nets)), None)


def special(address: Address) -> str | None:
    """What an address is, when no URL of any kind may lead there by default; None for an ordinary address
    (public, or private: see `internal`)."""
    return _first(embedded_ipv4(address) or address, ALWAYS_REFUSED)


def internal(address: Address) -> str | None:
    """What a private address is (a receiver may not reach it by default); None for any other address."""
    return _first(embedded_ipv4(address) or address, INTERNAL)


def carried(address: Address) -> str:
    """' (IPv4-mapped 127.0.0.1)' for an address that carries an IPv4 one, else ''."""
    inner = embedded_ipv4(address)
    if inner is None:
        return ""
    form = "IPv4-mapped" if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped else "NAT64 of"
    return f" ({form} {inner})"


def refusal(kind: Kind, host: str, address: Address, policy: EgressPolicy) -> str | None:
    """Why a URL of `kind` naming `host` may not be connected to at `address` (what the address is), or None.

    An address the admin allows (a CIDR or address of MFL_EGRESS_ALLOW, matching the address or the IPv4 one
    it carries) is always allowed. A host name the admin allows lifts only the private-address refusal of
    receivers (an in-cluster receiver by its Service name): loopback, metadata and the API server stay
    refused whatever a name resolves to, unless their address itself is allowed."""
    inner = embedded_ipv4(address)
    if policy.allow.allows_address(address) or (inner is not None and policy.allow.allows_address(inner)):
        return None
    what = special(address)
    if what:
        return what
    if address in policy.api_server or (inner is not None and inner in policy.api_server):
        return API_SERVER
    if kind == RECEIVER and not policy.allow.allows_host(host):
        return internal(address)
    return None


def refusal_text(address: Address, what: str) -> str:
    """The message of a refused connection (at most ~150 characters); the caller names the (redacted) URL."""
    return f"not connected: {address}{carried(address)} is {what}; {ADVICE}"


# --- literal addresses, in every spelling a resolver accepts ---------------------------------------------------


def ipv4_number(host: str) -> int | None:
    """The IPv4 address `host` spells as inet_aton (and so getaddrinfo) reads it: one to four parts, each
    decimal, octal (a leading 0) or hex (0x), the last filling the remaining bytes, trailing dots ignored
    (2130706433, 0x7f.1, 0177.0.0.1, 127.1, 127.0.0.1.); None when it is no IPv4 address."""
    parts = host.lower().rstrip(".").split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values = []
    for part in parts:
        try:
            if part.startswith("0x"):
                values.append(int(part[2:] or "0", 16))
            elif len(part) > 1 and part.startswith("0"):
                values.append(int(part[1:], 8))
            else:
                values.append(int(part, 10))
        except ValueError:
            return None
        if not part or not part.isalnum():  # int() accepts "+1", " 1", "1_0": no resolver does
            return None
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (5 - len(values)):
        return None
    number = last
    for index, value in enumerate(head):
        number += value << (8 * (3 - index))
    return number


def literal_address(host: str) -> Address | None:
    """The address a URL's host names literally (an IPv6 one without its brackets, zone id dropped), or None."""
    text = host.lower()
    if ":" in text:
        try:
            return ipaddress.IPv6Address(text.split("%", 1)[0])
        except ValueError:
            return None
    number = ipv4_number(text)
    return ipaddress.IPv4Address(number) if number is not None else None


def literal_refusal(host: str) -> str | None:
    """Why a URL may not name this host at all, known from the spelling alone (None: judged at connect time).

    An address no URL may lead to (loopback, metadata, link-local, ... in any spelling), an IPv4 address not
    written as a.b.c.d (resolvers disagree on such spellings, and aiohttp refuses them), or a name every
    resolver answers with loopback or metadata."""
    name = host.lower().rstrip(".")
    if name in SPECIAL_NAMES or name.endswith(".localhost"):
        return f"{host!r} is {'cloud metadata' if 'metadata' in name else 'loopback'}"
    address = literal_address(host)
    if address is None:
        return None
    what = special(address)
    if what:
        return f"{host!r} is {what}{carried(address)}"
    if isinstance(address, ipaddress.IPv4Address) and host != str(address):
        return f"{host!r} spells the IPv4 address {address} in another form: write it as {address}"
    return None
