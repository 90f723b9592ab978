"""Is a URL well formed enough to hand to a resolver? (stdlib only: the schema uses it too)

A host that DNS cannot even encode (a label over 63 characters, an invalid IDNA label) used to
surface as an internal error, and one holding `%`, NUL or spaces was sent to DNS and retried as
a network failure. Both are the caller's mistake, decided here before any network call.
"""
from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_BAD_CHARS = re.compile(r"[\x00-\x20\x7f\\]")
MAX_HOST_CHARS = 253


def host_problem(host: str) -> str | None:
    """Why `host` (a name or an IP literal, brackets allowed) is malformed, or None."""
    if not host:
        return "URL has no host"
    literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(literal)
        return None
    except ValueError:
        if ":" in literal:
            return "malformed IPv6 address"
    if _BAD_CHARS.search(host) or "%" in host:
        return "host contains '%', spaces or control characters"
    if any(len(label) > 63 for label in host.split(".")):
        return "a host label is longer than 63 characters"
    try:
        ascii_host = (host if host.isascii() else host.encode("idna").decode("ascii")).lower()
        for label in ascii_host.split("."):
            if label.startswith("xn--"):
                label.encode("ascii").decode("idna")  # an A-label must decode (punycode)
    except UnicodeError:
        return "host is not a valid (internationalised) domain name"
    name = ascii_host[:-1] if ascii_host.endswith(".") else ascii_host
    if len(name) > MAX_HOST_CHARS:
        return f"host is longer than {MAX_HOST_CHARS} characters"
    for label in name.split("."):
        if not _LABEL.match(label):
            if not label:
                return "host has an empty label"
            if len(label) > 63:
                return "a host label is longer than 63 characters"
            return f"host label {label[:63]!r} has characters a domain name cannot hold"
    return None


def url_problem(url: str) -> str | None:
    """Why `url` is malformed (not whether it is allowed), or None."""
    if _BAD_CHARS.search(url):
        return "URL contains spaces, backslashes or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a bad port
        netloc_host = parts.netloc.rsplit("@", 1)[-1]
    except ValueError as exc:
        return f"malformed URL ({exc})"
    if port == 0:  # no server listens there; refused here rather than retried as a network failure
        return "port 0 is not a port a server can listen on"
    if netloc_host.startswith("["):
        host = netloc_host.split("]", 1)[0] + "]"
    else:
        host = netloc_host.rsplit(":", 1)[0] if netloc_host.count(":") == 1 else netloc_host
    return host_problem(host)
