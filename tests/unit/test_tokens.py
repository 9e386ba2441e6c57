"""Data-plane tokens: issue, verify, and every way a token is refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable

import pytest

from workers.dataplane.tokens import Claims, NonceStore, issue_token, verify_token
from workers.errors import BadRequest, TokenError

SECRET = b"cluster-secret-0123456789"
NOW = 1_700_000_000.0


def _token(**kw: object) -> str:
    args: dict[str, object] = {"secret": SECRET, "migration": "m-1", "src": "pi1", "dst": "pi2"}
    args.update(kw)
    return issue_token(now=NOW, ttl_s=600, **args)  # type: ignore[arg-type]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _retamper(token: str, **changes: object) -> str:
    """The token with its claims changed and the original signature kept."""
    body, mac = token.split(".")
    claims = json.loads(_unb64(body))
    claims.update(changes)
    return _b64(json.dumps(claims).encode()) + "." + mac


def _resign_raw(raw: bytes) -> str:
    """A correctly signed token over arbitrary bytes (what a buggy issuer could make)."""
    body = _b64(raw)
    mac = hmac.new(SECRET, b"ferry-token-v1." + body.encode(), hashlib.sha256).digest()
    return body + "." + _b64(mac)


def _resign(claims: object) -> str:
    return _resign_raw(json.dumps(claims).encode())


def test_valid_token_round_trips() -> None:
    claims = verify_token(SECRET, _token(), dst="pi2", now=NOW + 1)
    assert claims == Claims("m-1", "pi1", "pi2", NOW + 600, claims.nonce)
    assert len(claims.nonce) == 32
    assert claims.nonce != verify_token(SECRET, _token(), dst="pi2", now=NOW).nonce


_CLAIMS = {"m": "m", "s": "a", "d": "pi2", "n": "x"}

REFUSED: list[tuple[str, Callable[[], str], dict[str, object], str]] = [
    ("wrong secret", lambda: _token(secret=b"another-secret-0123456"), {}, "bad signature"),
    ("tampered migration", lambda: _retamper(_token(), m="m-2"), {}, "bad signature"),
    ("tampered expiry", lambda: _retamper(_token(), exp=NOW + 1e9), {}, "bad signature"),
    ("tampered dst", lambda: _retamper(_token(dst="pi3"), d="pi2"), {}, "bad signature"),
    ("wrong dst", lambda: _token(dst="pi3"), {}, "for node 'pi3', not 'pi2'"),
    ("expired", _token, {"now": NOW + 600}, "expired"),
    ("long expired", _token, {"now": NOW + 3600}, "expired 3000 s ago"),
    ("empty", lambda: "", {}, "malformed"),
    ("no dot", lambda: _token().replace(".", ""), {}, "malformed"),
    ("two dots", lambda: _token() + ".x", {}, "malformed"),
    ("bad alphabet", lambda: _token().replace(".", ".+/"), {}, "malformed"),
    ("trailing newline", lambda: _token() + "\n", {}, "malformed"),
    ("huge", lambda: "a" * 5000 + ".b", {}, "malformed"),
    ("truncated mac", lambda: _token()[:-4], {}, "bad signature"),
    ("signed non-JSON", lambda: _resign_raw(b"\xff\xfe"), {}, "not JSON"),
    ("signed list", lambda: _resign([1, 2]), {}, "not an object"),
    ("missing dst", lambda: _resign({**_CLAIMS, "d": None, "exp": NOW + 9}), {}, "claims"),
    ("numeric nonce", lambda: _resign({**_CLAIMS, "n": 7, "exp": NOW + 9}), {}, "claims"),
    ("text expiry", lambda: _resign({**_CLAIMS, "exp": "9"}), {}, "expiry"),
    ("bool expiry", lambda: _resign({**_CLAIMS, "exp": True}), {}, "expiry"),
]


@pytest.mark.parametrize(
    ("make", "overrides", "message"),
    [case[1:] for case in REFUSED],
    ids=[case[0] for case in REFUSED],
)
def test_refused(make: Callable[[], str], overrides: dict[str, object], message: str) -> None:
    kwargs: dict[str, object] = {"dst": "pi2", "now": NOW + 1}
    kwargs.update(overrides)
    with pytest.raises(TokenError, match=message):
        verify_token(SECRET, make(), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("secret", [b"", b"short", "a-text-secret-not-bytes"])
def test_weak_secret_is_a_bad_request(secret: object) -> None:
    with pytest.raises(BadRequest, match="at least 16 bytes"):
        issue_token(secret, "m", "a", "b", now=NOW)  # type: ignore[arg-type]


def test_nonpositive_lifetime_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="lifetime"):
        issue_token(SECRET, "m", "a", "b", now=NOW, ttl_s=0)


def test_nonce_store_accepts_each_nonce_once_until_expiry() -> None:
    store = NonceStore()
    first = verify_token(SECRET, _token(), dst="pi2", now=NOW)
    store.use(first, now=NOW)
    store.use(verify_token(SECRET, _token(), dst="pi2", now=NOW), now=NOW)
    with pytest.raises(TokenError, match="replayed"):
        store.use(first, now=NOW + 599)
    # After expiry the nonce is forgotten; verify_token refuses such a token anyway.
    store.use(first, now=NOW + 600)
