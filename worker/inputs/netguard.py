"""Decide which network destinations a job may make the worker fetch from (SSRF guard).

Why this exists: a job payload names URLs that the worker downloads from inside the
Runpod network. Without a guard a caller could point it at the cloud metadata service,
at other containers on the private network, or at the worker's own loopback services
and read the answer back through the generated video or through error messages.

The rules: an address is fetchable only if it is a public unicast address. Every name
is resolved and refused if ANY of its addresses is refused (a name with one public
and one private record is an attack, not an accident). The vetted address is then the
one we connect to (`GuardedTransport`), so a DNS answer that changes between the check
and the connect (DNS rebinding) cannot steer the socket elsewhere; TLS still uses the
original host name for SNI and certificate checks, and the Host header is unchanged.

An explicit allow-list (`NetPolicy.allow`) exists only for local development and tests
(e.g. a MinIO container or a test server on 127.0.0.1); it is empty by default.
"""
from __future__ import annotations

import ipaddress
import socket
import typing
from dataclasses import dataclass, field

import httpcore
import httpx

from contract.urlform import host_problem, url_problem

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Names that reach cloud instance metadata or the local machine whatever DNS says.
BLOCKED_HOSTNAMES: frozenset[str] = frozenset(
    {
        "localhost",
        "localhost.localdomain",
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
    }
)

#: Well-known metadata endpoints, named separately so the refusal message says what they are.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, Runpod-style hosts
        ipaddress.ip_address("169.254.170.2"),  # AWS ECS task metadata
        ipaddress.ip_address("fd00:ec2::254"),  # AWS IMDS over IPv6
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    }
)

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_THIS_NET = ipaddress.ip_network("0.0.0.0/8")
_NAT64_WKP = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_IPV4_COMPAT = ipaddress.ip_network("::/96")
_SITE_LOCAL = ipaddress.ip_network("fec0::/10")
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")
_DOC_V6 = ipaddress.ip_network("2001:db8::/32")
_TEREDO = ipaddress.ip_network("2001::/32")
_IETF_PROTO = ipaddress.ip_network("192.0.0.0/24")
#: The only globally reachable addresses of 192.0.0.0/24 (PCP and TURN anycast); Python's
#: `is_global` also passes 192.0.0.8, IANA's "dummy address", which no host should serve.
_IETF_PROTO_GLOBAL = frozenset({ipaddress.ip_address("192.0.0.9"), ipaddress.ip_address("192.0.0.10")})


class AddressRefused(Exception):
    """A destination the guard will not let the worker contact.

    Raised (not returned) so that it also escapes from inside httpx's connection code
    untouched: httpx only re-wraps httpcore's own exception types.
    """

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"{host}: {reason}")
        self.host = host
        self.reason = reason


class MalformedURL(AddressRefused):
    """A URL or host that cannot name a destination at all (refused before any DNS lookup)."""


@dataclass(frozen=True)
class NetPolicy:
    """Which destinations are allowed beyond the public internet.

    `allow` holds host names (matched case-insensitively, exact) and IP networks in CIDR
    form ("127.0.0.1", "10.0.0.0/8", "::1/128"). A name on the list may resolve to any
    address; a CIDR entry lets through addresses inside it whatever name led there.
    """

    allow: tuple[str, ...] = ()
    resolver: typing.Callable[[str, int], list[IPAddress]] | None = field(default=None, compare=False)

    def allowed_hosts(self) -> frozenset[str]:
        return frozenset(a.strip().lower().rstrip(".") for a in self.allow if not _looks_like_network(a))

    def allowed_networks(self) -> tuple[IPNetwork, ...]:
        return tuple(ipaddress.ip_network(a.strip(), strict=False) for a in self.allow if _looks_like_network(a))


def _looks_like_network(entry: str) -> bool:
    try:
        ipaddress.ip_network(entry.strip(), strict=False)
    except ValueError:
        return False
    return True


def address_refusal(ip: IPAddress) -> str | None:
    """Why `ip` must not be contacted, or None when it is a public unicast address."""
    if ip in METADATA_ADDRESSES:
        return "cloud metadata address"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return "IPv4-mapped IPv6 address"
        if ip in _NAT64_LOCAL:
            return "local-use NAT64 address"
        if ip in _NAT64_WKP:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
            inner = address_refusal(embedded)
            return f"NAT64 address embedding a refused IPv4 address ({inner})" if inner else None
        if ip.sixtofour is not None:
            inner = address_refusal(ip.sixtofour)
            if inner:
                return f"6to4 address embedding a refused IPv4 address ({inner})"
        if ip in _TEREDO:
            return "Teredo tunnel address"
        if ip in _IPV4_COMPAT and not ip.is_unspecified and not ip.is_loopback:
            return "IPv4-compatible IPv6 address"
        if ip.scope_id:
            return "scoped IPv6 address"
    if ip.is_unspecified:
        return "unspecified address"
    if ip.is_loopback:
        return "loopback address"
    if ip.is_link_local:
        return "link-local address"
    if ip.is_multicast:
        return "multicast address"
    if isinstance(ip, ipaddress.IPv4Address):
        if ip in _CGNAT:
            return "carrier-grade NAT address (100.64.0.0/10)"
        if ip in _THIS_NET:
            return "'this network' address (0.0.0.0/8)"
        if ip == ipaddress.IPv4Address("255.255.255.255"):
            return "broadcast address"
        if ip in _IETF_PROTO and ip not in _IETF_PROTO_GLOBAL:
            return "IETF protocol assignment address (192.0.0.0/24)"
    else:
        if ip in _SITE_LOCAL:
            return "site-local IPv6 address"
        if ip in _UNIQUE_LOCAL:
            return "unique-local IPv6 address"
        if ip in _DOC_V6:
            return "documentation address"
    if ip.is_reserved:
        return "reserved address"
    if ip.is_private:
        return "private address"
    if not ip.is_global:
        return "non-global address"
    return None


def _default_resolver(host: str, port: int) -> list[IPAddress]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    out: list[IPAddress] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        addr = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])
        if addr not in out:
            out.append(addr)
    return out


def _literal_ip(host: str) -> IPAddress | None:
    h = host.strip("[]")
    try:
        return ipaddress.ip_address(h)
    except ValueError:
        return None


def vet_host(host: str, port: int, policy: NetPolicy) -> list[IPAddress]:
    """Resolve `host` and return its addresses if every one of them may be contacted.

    Raises AddressRefused naming the first refused address (or the name itself). DNS
    failures are not refusals: they raise `socket.gaierror` so callers can treat them
    as a (possibly transient) network failure.
    """
    problem = host_problem(host)
    if problem:
        raise MalformedURL(host, problem)
    name = host.strip("[]").lower().rstrip(".")
    host_allowed = name in policy.allowed_hosts()
    networks = policy.allowed_networks()

    literal = _literal_ip(name)
    if literal is None and not host_allowed:
        if name in BLOCKED_HOSTNAMES or name.endswith(".localhost"):
            raise AddressRefused(host, "host name reserved for local or metadata services")
    if literal is not None:
        addrs = [literal]
    else:
        resolver = policy.resolver or _default_resolver
        addrs = resolver(name, port)
        if not addrs:
            raise socket.gaierror(f"no addresses for {host}")
    if host_allowed:
        return addrs
    for ip in addrs:
        if any(ip.version == n.version and ip in n for n in networks):
            continue
        reason = address_refusal(ip)
        if reason:
            shown = str(ip) if literal is not None else f"resolves to {ip}"
            raise AddressRefused(host, f"{shown}: {reason}")
    return addrs


class _PinnedBackend(httpcore.NetworkBackend):
    """An httpcore network backend that vets the destination at connect time.

    Resolution, vetting and connecting happen in one step with the same addresses, so a
    second DNS answer can never be used; TLS (done by httpcore on top of this stream)
    keeps the origin's host name for SNI and certificate verification.
    """

    def __init__(self, policy: NetPolicy) -> None:
        self._policy = policy
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addrs = vet_host(host, port, self._policy)
        except socket.gaierror as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        last: Exception | None = None
        for ip in addrs:
            try:
                return self._inner.connect_tcp(
                    str(ip), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    def connect_unix_socket(self, *args: typing.Any, **kwargs: typing.Any) -> httpcore.NetworkStream:
        raise AddressRefused("unix socket", "unix sockets are never fetched")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class GuardedTransport(httpx.HTTPTransport):
    """httpx transport whose every TCP connection goes through `vet_host` and is pinned.

    Proxies are not supported on purpose: a proxy would resolve names itself, out of our
    sight. Use it with `httpx.Client(transport=..., trust_env=False)`.
    """

    def __init__(self, policy: NetPolicy, *, verify: bool | str = True, retries: int = 0) -> None:
        super().__init__(verify=verify, trust_env=False)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            max_connections=10,
            max_keepalive_connections=5,
            http1=True,
            http2=False,
            retries=retries,
            network_backend=_PinnedBackend(policy),
        )


def vet_url(url: str | httpx.URL, policy: NetPolicy, allowed_schemes: typing.Collection[str]) -> httpx.URL:
    """Check a URL's scheme and host before any request is made (a clear early refusal)."""
    scheme = str(url).split(":", 1)[0].lower()
    if scheme not in allowed_schemes:
        raise AddressRefused("", f"scheme {scheme[:20]!r} not allowed (allowed: {', '.join(sorted(allowed_schemes))})")
    problem = url_problem(str(url))
    if problem:
        raise MalformedURL("", problem)
    try:
        u = httpx.URL(str(url)) if not isinstance(url, httpx.URL) else url
    except (httpx.InvalidURL, UnicodeError, ValueError) as exc:
        raise MalformedURL("", f"malformed URL ({type(exc).__name__})") from None
    if u.scheme not in allowed_schemes:
        raise AddressRefused(u.host or "", f"scheme {u.scheme!r} not allowed (allowed: {', '.join(sorted(allowed_schemes))})")
    port = u.port or (443 if u.scheme == "https" else 80)
    vet_host(u.raw_host.decode("ascii", "replace"), port, policy)
    return u
