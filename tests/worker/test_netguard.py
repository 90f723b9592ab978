"""netguard: which addresses are refused, DNS answers, allow-list, and pinning."""
from __future__ import annotations

import ipaddress
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from worker.inputs.netguard import (
    AddressRefused,
    GuardedTransport,
    NetPolicy,
    address_refusal,
    vet_host,
    vet_url,
)

REFUSED = [
    "127.0.0.1",
    "127.8.9.10",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.0.1",
    "100.64.0.1",
    "100.127.255.254",
    "169.254.169.254",
    "169.254.10.10",
    "0.0.0.0",
    "0.1.2.3",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd12:3456::1",
    "fd00:ec2::254",
    "fec0::1",
    "ff02::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:8.8.8.8",  # mapped forms are refused outright
    "::127.0.0.1",
    "::10.0.0.1",
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b:1::1",
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:c0a8:101::1",  # 6to4 of 192.168.1.1
    "2001:db8::1",
    "2001:0:4136:e378::1",  # Teredo
]

ALLOWED = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2a00:1450::1", "64:ff9b::808:808", "2002:808:808::1"]


@pytest.mark.parametrize("addr", REFUSED)
def test_refused_addresses(addr: str) -> None:
    assert address_refusal(ipaddress.ip_address(addr)) is not None


@pytest.mark.parametrize("addr", ALLOWED)
def test_public_addresses(addr: str) -> None:
    assert address_refusal(ipaddress.ip_address(addr)) is None


def test_metadata_named() -> None:
    assert "metadata" in address_refusal(ipaddress.ip_address("169.254.169.254"))
    assert "metadata" in address_refusal(ipaddress.ip_address("fd00:ec2::254"))


def _resolver(table: dict[str, list[str]]):
    def resolve(host: str, port: int):
        if host not in table:
            import socket

            raise socket.gaierror(f"unknown {host}")
        return [ipaddress.ip_address(a) for a in table[host]]

    return resolve


def test_any_refused_record_refuses_the_name() -> None:
    pol = NetPolicy(resolver=_resolver({"mixed.test": ["8.8.8.8", "10.1.1.1"], "ok.test": ["8.8.8.8", "2606:4700::1"]}))
    with pytest.raises(AddressRefused, match="10.1.1.1"):
        vet_host("mixed.test", 443, pol)
    assert len(vet_host("ok.test", 443, pol)) == 2


@pytest.mark.parametrize("name", ["localhost", "metadata.google.internal", "METADATA.google.internal.", "a.localhost"])
def test_blocked_names(name: str) -> None:
    pol = NetPolicy(resolver=_resolver({name.lower().rstrip("."): ["8.8.8.8"]}))
    with pytest.raises(AddressRefused):
        vet_host(name, 80, pol)


def test_odd_ipv4_spellings_are_resolved_then_refused() -> None:
    # inet_aton accepts these; getaddrinfo turns them into 127.0.0.1 without DNS.
    for spelling in ("2130706433", "0x7f.1", "127.1", "0177.0.0.1"):
        with pytest.raises(AddressRefused, match="loopback"):
            vet_host(spelling, 80, NetPolicy())


def test_allow_list_hosts_and_cidrs() -> None:
    res = _resolver({"minio": ["172.18.0.5"], "other": ["172.18.0.6"]})
    assert vet_host("minio", 9000, NetPolicy(allow=("minio",), resolver=res))
    assert vet_host("127.0.0.1", 80, NetPolicy(allow=("127.0.0.0/8",)))
    assert vet_host("::1", 80, NetPolicy(allow=("::1/128",)))
    with pytest.raises(AddressRefused):
        vet_host("other", 9000, NetPolicy(allow=("minio",), resolver=res))
    with pytest.raises(AddressRefused):
        vet_host("10.0.0.1", 80, NetPolicy(allow=("127.0.0.0/8",)))


def test_vet_url_scheme() -> None:
    with pytest.raises(AddressRefused, match="scheme"):
        vet_url("http://8.8.8.8/x", NetPolicy(), {"https"})
    with pytest.raises(AddressRefused, match="scheme"):
        vet_url("file:///etc/passwd", NetPolicy(), {"https"})
    assert vet_url("https://8.8.8.8/x", NetPolicy(), {"https"}).host == "8.8.8.8"
    with pytest.raises(AddressRefused):
        vet_url("https://[::ffff:7f00:1]/", NetPolicy(), {"https"})


class _EchoHost(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = (self.headers.get("Host") or "").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # quiet
        pass


@pytest.fixture()
def echo_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHost)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def test_transport_pins_vetted_address_and_keeps_host(echo_server: int) -> None:
    pol = NetPolicy(allow=("127.0.0.0/8",), resolver=_resolver({"files.test": ["127.0.0.1"]}))
    with httpx.Client(transport=GuardedTransport(pol), trust_env=False) as c:
        r = c.get(f"http://files.test:{echo_server}/x")
    assert r.status_code == 200
    assert r.text == f"files.test:{echo_server}"


def test_transport_defeats_dns_rebinding(echo_server: int) -> None:
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])

    def rebinding(host: str, port: int):
        return [ipaddress.ip_address(a) for a in next(answers)]

    pol = NetPolicy(resolver=rebinding)
    url = f"http://rebind.test:{echo_server}/"
    vet_url(url, pol, {"http"})  # first answer: public, passes
    with httpx.Client(transport=GuardedTransport(pol), trust_env=False) as c:
        with pytest.raises(AddressRefused, match="loopback"):
            c.get(url)  # second answer at connect time: refused, socket never opened


def test_transport_refuses_loopback_by_default(echo_server: int) -> None:
    with httpx.Client(transport=GuardedTransport(NetPolicy()), trust_env=False) as c:
        with pytest.raises(AddressRefused):
            c.get(f"http://127.0.0.1:{echo_server}/")


# ----------------------------------------------------------------------------- URL form (issue 13)

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from worker.inputs.netguard import MalformedURL  # noqa: E402
from contract.urlform import host_problem, url_problem  # noqa: E402

_LDH = "abcdefghijklmnopqrstuvwxyz0123456789"
_label = st.builds(lambda a, mid, b: a + mid + b, st.text(_LDH, min_size=1, max_size=1),
                   st.text(_LDH + "-", max_size=40), st.text(_LDH, min_size=1, max_size=1))
valid_hosts = st.lists(_label, min_size=2, max_size=4).map(".".join).filter(lambda h: len(h) <= 253)
HYP = dict(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))


@settings(max_examples=300, **HYP)
@given(host=valid_hosts, port=st.one_of(st.none(), st.integers(1, 65535)), path=st.text(_LDH + "/._-", max_size=30))
def test_well_formed_urls_are_not_called_malformed(host, port, path):
    url = f"https://{host}{'' if port is None else f':{port}'}/{path}"
    assert url_problem(url) is None and host_problem(host) is None


@settings(max_examples=300, **HYP)
@given(label=st.text(_LDH, min_size=64, max_size=300), bad=st.sampled_from(["%00", "%2e", "\x00", " ", "..", "\\", "%"]))
def test_malformed_hosts_are_refused_before_the_resolver(label, bad):
    calls: list[str] = []

    def resolver(name: str, port: int):
        calls.append(name)
        return []

    for host in (f"x.{label}.com", f"a{bad}b.com"):
        with pytest.raises(MalformedURL):
            vet_url(f"https://{host}/a.png", NetPolicy(resolver=resolver), {"https"})
    assert calls == []
