"""Authorization as Runpod checks it: the key in `Authorization`, bare or as `Bearer <key>`.

With no key configured every request is accepted, so local clients need no secret.
"""

from __future__ import annotations

import hmac

from fastapi import Request


def authorized(request: Request, api_key: str | None) -> bool:
    if api_key is None:
        return True
    header = request.headers.get("authorization", "")
    scheme, _, rest = header.partition(" ")
    presented = rest.strip() if scheme.lower() == "bearer" else header.strip()
    return hmac.compare_digest(presented.encode(), api_key.encode())
