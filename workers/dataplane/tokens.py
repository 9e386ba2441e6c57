"""Data-plane tokens: who may send which migration's bytes to which node.

The coordinator (or the source node) issues a token per connection with the
cluster secret; the destination's transfer service verifies it. A token is

    base64url(claims JSON) "." base64url(HMAC-SHA256(secret, "ferry-token-v1." + first part))

with claims ``{"m": migration, "s": src, "d": dst, "exp": unix seconds, "n": nonce}``.
It is signed, not encrypted: the claims are not secret. Verification is pure
(the caller passes ``now``); replay protection needs state, so it lives in
:class:`NonceStore`, which the server keeps: each nonce opens one connection.

>>> secret = b"0123456789abcdef"
>>> token = issue_token(secret, "m1", "pi1", "pi2", now=1000.0)
>>> verify_token(secret, token, dst="pi2", now=1001.0).migration
'm1'
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import threading
from dataclasses import dataclass
from typing import Any

from workers.errors import BadRequest, TokenError

_DOMAIN = b"ferry-token-v1."
_MAX_TOKEN_CHARS = 2048
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
MIN_SECRET_BYTES = 16


@dataclass(frozen=True)
class Claims:
    """What a verified token allows: send ``migration``'s bytes from ``src`` to ``dst``."""

    migration: str
    src: str
    dst: str
    expiry: float  # unix seconds
    nonce: str


def issue_token(
    secret: bytes, migration: str, src: str, dst: str, now: float, ttl_s: float = 600
) -> str:
    """Return a token letting ``src`` send ``migration``'s bytes to ``dst`` until ``now + ttl_s``."""
    _check_secret(secret)
    if ttl_s <= 0:
        raise BadRequest(f"token lifetime must be positive, not {ttl_s}")
    claims = {"m": migration, "s": src, "d": dst, "exp": now + ttl_s, "n": secrets.token_hex(16)}
    body = _b64encode(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    return f"{body}.{_b64encode(_mac(secret, body))}"


def verify_token(secret: bytes, token: str, *, dst: str, now: float) -> Claims:
    """Return the claims of ``token`` if it is genuine, meant for ``dst`` and not expired.

    Raises TokenError otherwise. Replays are not detected here (see NonceStore).
    """
    _check_secret(secret)
    if (
        not isinstance(token, str)
        or len(token) > _MAX_TOKEN_CHARS
        or not _TOKEN_SHAPE.fullmatch(token)
    ):
        raise TokenError("malformed data-plane token")
    body, mac = token.split(".")
    if not hmac.compare_digest(_b64decode(mac), _mac(secret, body)):
        raise TokenError("data-plane token has a bad signature (wrong cluster secret?)")
    claims = _parse_claims(_b64decode(body))
    if claims.dst != dst:
        raise TokenError(f"data-plane token is for node {claims.dst!r}, not {dst!r}")
    if now >= claims.expiry:
        ago = now - claims.expiry
        raise TokenError(f"data-plane token for {claims.migration!r} expired {ago:.0f} s ago")
    return claims


class NonceStore:
    """The nonces already used on this node, each remembered until its token expires."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def use(self, claims: Claims, now: float) -> None:
        """Accept ``claims.nonce`` once; raise TokenError if it was used before."""
        with self._lock:
            self._seen = {n: exp for n, exp in self._seen.items() if exp > now}
            if claims.nonce in self._seen:
                raise TokenError(
                    f"data-plane token for {claims.migration!r} was already used "
                    "(replayed): each connection needs a fresh token"
                )
            self._seen[claims.nonce] = claims.expiry


def _check_secret(secret: bytes) -> None:
    if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_BYTES:
        raise BadRequest(f"the cluster secret must be at least {MIN_SECRET_BYTES} bytes")


def _mac(secret: bytes, body: str) -> bytes:
    return hmac.new(secret, _DOMAIN + body.encode("ascii"), hashlib.sha256).digest()


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenError("malformed data-plane token") from exc


def _parse_claims(raw: bytes) -> Claims:
    try:
        obj: Any = json.loads(raw)
    except ValueError as exc:
        raise TokenError("malformed data-plane token: claims are not JSON") from exc
    if not isinstance(obj, dict):
        raise TokenError("malformed data-plane token: claims are not an object")
    m, s, d, n, exp = (obj.get(k) for k in ("m", "s", "d", "n", "exp"))
    if not (
        isinstance(m, str) and isinstance(s, str) and isinstance(d, str) and isinstance(n, str)
    ):
        raise TokenError("malformed data-plane token: missing or mistyped claims")
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        raise TokenError("malformed data-plane token: missing or mistyped expiry")
    return Claims(migration=m, src=s, dst=d, expiry=float(exp), nonce=n)
