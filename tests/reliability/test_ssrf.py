"""SSRF and path escapes, beyond tests/worker/test_netguard.py and test_fetch.py.

What is added here: generated addresses across every refused range in all their spellings
(IPv4 literals in decimal/hex/octal, IPv4-mapped, IPv4-compatible, NAT64 and 6to4 IPv6), DNS
names that resolve into them (through the injected resolver, so no real DNS is involved),
redirects from an allowed server into them and into other schemes, and volume paths that try
to leave the root (generated `..` forms, symlink chains, FIFOs and devices that would block or
stream forever). Every refusal must be E_INPUT_VALIDATION, happen before any connection to the
refused address, and leave no file behind.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import stat
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability.test_fuzz import hard_deadline
from contract.errors import ErrorCode, JobError
from worker.inputs.fetch import FetchPolicy, fetch_media
from worker.inputs.netguard import NetPolicy

PNG = (Path(__file__).resolve().parents[2] / "examples" / "media" / "portrait.png").read_bytes()
COMMON = dict(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)

REFUSED_V4 = [
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10", "0.0.0.0/8",
    "192.0.0.0/24", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4", "192.0.2.0/24",
]
REFUSED_V6 = ["::1/128", "fe80::/10", "fc00::/7", "fec0::/10", "ff00::/8", "2001:db8::/32"]


def in_net(cidr: str) -> st.SearchStrategy:
    net = ipaddress.ip_network(cidr)
    return st.integers(0, net.num_addresses - 1).map(lambda i: net[i])


refused_v4 = st.one_of(*[in_net(c) for c in REFUSED_V4], st.just(ipaddress.ip_address("169.254.169.254")))
refused_v6 = st.one_of(*[in_net(c) for c in REFUSED_V6], st.just(ipaddress.ip_address("fd00:ec2::254")))


def v6_forms(v4: ipaddress.IPv4Address) -> list[ipaddress.IPv6Address]:
    n = int(v4)
    return [
        ipaddress.IPv6Address(f"::ffff:{v4}"),  # IPv4-mapped
        ipaddress.IPv6Address(n),  # IPv4-compatible (::a.b.c.d)
        ipaddress.IPv6Address((0x0064FF9B << 96) | n),  # NAT64 well-known prefix
        ipaddress.IPv6Address((0x2002 << 112) | (n << 80)),  # 6to4
    ]


def v4_spellings(v4: ipaddress.IPv4Address) -> list[str]:
    n, parts = int(v4), [int(p) for p in str(v4).split(".")]
    return [str(v4), str(n), hex(n), "0" + oct(n)[2:], ".".join(hex(p) for p in parts), ".".join("0" + oct(p)[2:] for p in parts)]


class Recorder:
    """A resolver that maps names to fixed answers and records that no refused address is dialled."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = {k: [ipaddress.ip_address(a) for a in v] for k, v in table.items()}

    def __call__(self, host: str, port: int):
        if host not in self.table:
            try:  # numeric spellings (2130706433, 0x7f.1) as the system resolver reads them, locally
                return [ipaddress.ip_address(socket.inet_aton(host))]
            except OSError:
                raise socket.gaierror(f"unknown test name {host}") from None
        return list(self.table[host])


def refuse(ref: str, tmp: Path, policy: FetchPolicy) -> JobError:
    with hard_deadline(5.0):
        with pytest.raises(JobError) as info:
            fetch_media(ref, tmp, policy, "image")
    assert info.value.code is ErrorCode.E_INPUT_VALIDATION, info.value.to_error_string()
    assert not any(tmp.iterdir()), list(tmp.iterdir())
    return info.value


# ----------------------------------------------------------------------------- literals and DNS


@settings(max_examples=300, **COMMON)
@given(v4=refused_v4, form=st.integers(0, 9), via_dns=st.booleans())
def test_refused_ipv4_in_every_spelling_and_via_dns(tmp_path_factory, v4, form, via_dns):
    tmp = tmp_path_factory.mktemp("ssrf")
    forms = v4_spellings(v4) + [f"[{a}]" for a in v6_forms(v4)]
    host = forms[form % len(forms)]
    if via_dns:
        answer = host.strip("[]")
        try:
            answer = str(ipaddress.ip_address(answer))
        except ValueError:
            answer = str(v4)
        policy = FetchPolicy(net=NetPolicy(resolver=Recorder({"innocent.example": [answer]})), attempts=1)
        host = "innocent.example"
    else:
        policy = FetchPolicy(net=NetPolicy(resolver=Recorder({})), attempts=1)
    err = refuse(f"https://{host}/face.png", tmp, policy)
    assert "refused" in err.message


@settings(max_examples=150, **COMMON)
@given(v6=refused_v6, via_dns=st.booleans())
def test_refused_ipv6_literals_and_names(tmp_path_factory, v6, via_dns):
    tmp = tmp_path_factory.mktemp("ssrf6")
    if via_dns:
        policy = FetchPolicy(net=NetPolicy(resolver=Recorder({"v6.example": [str(v6)]})), attempts=1)
        refuse("https://v6.example/a.png", tmp, policy)
    else:
        refuse(f"https://[{v6}]/a.png", tmp, FetchPolicy(attempts=1))


def test_one_private_record_among_public_ones_refuses_the_name(tmp_path):
    res = Recorder({"mixed.example": ["93.184.216.34", "2606:2800:220:1::1", "::ffff:10.0.0.1"]})
    err = refuse("https://mixed.example/a.png", tmp_path, FetchPolicy(net=NetPolicy(resolver=res), attempts=1))
    assert "IPv4-mapped" in err.message


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST.", "x.localhost", "metadata.google.internal", "metadata",
                                  "instance-data.ec2.internal"])
def test_reserved_names_refused_without_asking_dns(tmp_path, host):
    def no_dns(h, p):
        raise AssertionError(f"DNS was asked for {h}")

    refuse(f"https://{host}/a.png", tmp_path, FetchPolicy(net=NetPolicy(resolver=no_dns), attempts=1))


# ----------------------------------------------------------------------------- redirects


class _Redirector(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/img.png":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            self.wfile.write(PNG)
            return
        target = self.path.removeprefix("/to/")
        self.send_response(302)
        self.send_header("Location", bytes.fromhex(target).decode())
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture(scope="module")
def redirector():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Redirector)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()


def _policy() -> FetchPolicy:
    res = Recorder({
        "good.test": ["127.0.0.1"],  # the test server, allowed by name
        "evil.test": ["10.0.0.5"],
        "mapped.test": ["::ffff:127.0.0.1"],
        "meta.test": ["169.254.169.254"],
        "rebind.test": ["93.184.216.34", "192.168.1.1"],
    })
    return FetchPolicy(allow_http=True, net=NetPolicy(allow=("good.test",), resolver=res), attempts=1)


@pytest.mark.parametrize(
    "location",
    [
        "http://evil.test/a.png", "http://mapped.test/a.png", "http://meta.test/latest/meta-data/",
        "http://rebind.test/a.png", "http://127.0.0.1:{port}/img.png", "http://[::1]:{port}/img.png",
        "http://2130706433:{port}/img.png", "http://0x7f.0.0.1:{port}/img.png", "http://[::ffff:7f00:1]:{port}/img.png",
        "http://169.254.169.254/", "file:///etc/passwd", "ftp://good.test/a.png", "gopher://good.test:70/_x",
        "//evil.test/a.png",  # scheme-relative
    ],
)
def test_redirects_into_refused_places_are_refused(redirector, tmp_path, location):
    loc = location.format(port=redirector)
    url = f"http://good.test:{redirector}/to/{loc.encode().hex()}"
    err = refuse(url, tmp_path, _policy())
    assert "redirected" in err.message or "scheme" in err.message, err.message


def test_redirect_to_the_allowed_host_still_works(redirector, tmp_path):
    url = f"http://good.test:{redirector}/to/{f'http://good.test:{redirector}/img.png'.encode().hex()}"
    with hard_deadline(5.0):
        got = fetch_media(url, tmp_path, _policy(), "image")
    assert got.path.read_bytes() == PNG


# ----------------------------------------------------------------------------- volume paths


@pytest.fixture()
def volume(tmp_path):
    root = tmp_path / "vol"
    (root / "in" / "deep").mkdir(parents=True)
    (root / "in" / "face.png").write_bytes(PNG)
    secret = tmp_path / "secret.png"
    secret.write_bytes(PNG)
    (root / "in" / "l1").symlink_to(root / "in" / "l2")  # a chain that ends outside
    (root / "in" / "l2").symlink_to(root / "in" / "deep" / "l3")
    (root / "in" / "deep" / "l3").symlink_to(secret)
    (root / "in" / "loop").symlink_to(root / "in" / "loop")
    (root / "in" / "proc").symlink_to("/proc/self/environ")
    (root / "in" / "up").symlink_to("..")  # root/in/up -> root (still inside)
    (root / "in" / "upup").symlink_to("../..")  # leaves the root
    os.mkfifo(root / "in" / "fifo.png")
    os.mknod(root / "in" / "zero.png", 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero's device
    return root, tmp_path / "dl"


@settings(max_examples=200, **COMMON)
@given(segments=st.lists(st.sampled_from(["..", ".", "in", "deep", "up", "upup", "", "secret.png", "face.png", "l1"]),
                         min_size=1, max_size=6))
def test_generated_paths_never_leave_the_root(volume, segments):
    root, dest = volume
    ref = str(root) + "/" + "/".join(segments)
    policy = FetchPolicy(volume_roots=(root,))
    with hard_deadline(5.0):
        try:
            got = fetch_media(ref, dest, policy, "image")
        except JobError as exc:
            assert exc.code in (ErrorCode.E_INPUT_VALIDATION, ErrorCode.E_DOWNLOAD_FAILED), exc.to_error_string()
            return
    real = Path(os.path.realpath(ref))
    assert real.is_relative_to(root.resolve()) and got.path.read_bytes() == PNG
    got.path.unlink()


@pytest.mark.parametrize("name", ["l1", "loop", "proc", "upup/secret.png", "fifo.png", "zero.png", "deep"])
def test_symlinks_fifos_and_devices_are_refused_without_blocking(volume, name):
    root, dest = volume
    dest.mkdir(exist_ok=True)
    refuse(str(root / "in" / name), dest, FetchPolicy(volume_roots=(root,)))


def test_a_root_that_is_itself_a_symlink_still_works(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "a.png").write_bytes(PNG)
    (tmp_path / "link").symlink_to(real)
    got = fetch_media(str(tmp_path / "link" / "a.png"), tmp_path / "dl", FetchPolicy(volume_roots=(tmp_path / "link",)), "image")
    assert got.path.read_bytes() == PNG
