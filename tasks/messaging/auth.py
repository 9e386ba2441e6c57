"""Authenticated commands: a node acts only on what the cluster secret vouches for.

Anyone who can write to the broker or the state store could otherwise make a
node, which runs as root, start a process or send a container's memory
elsewhere. So every command that changes something carries an HMAC-SHA256
with the cluster secret over what it asks for:

- ``ferry.node.run`` / ``ferry.node.kill``: over the node, the container and
  the command, with the time it was issued (valid for ``MAX_AGE_S``);
- a migration record: over its id, container, source, destination,
  strategy and synced directories, checked by both nodes before every phase;
- the addresses a node hands out (its data-plane listener, CRIU's page
  server, its rsync daemons): over the migration, the node and the address
  (and for rsync the directory it writes), checked before any byte is sent
  there.

Submitting work therefore needs the broker URL *and* the cluster secret.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from workers.errors import TokenError

MAX_AGE_S = 300.0
_DOMAIN = "ferry-command-v1"


def sign(secret: bytes, kind: str, *parts: Any) -> str:
    """The MAC of a ``kind`` command over ``parts`` (JSON-encoded, so unambiguous)."""
    body = json.dumps([_DOMAIN, kind, *parts], separators=(",", ":"), sort_keys=True)
    return hmac.new(secret, body.encode(), hashlib.sha256).hexdigest()


def verify(secret: bytes, mac: object, kind: str, *parts: Any) -> None:
    """Raise TokenError unless ``mac`` is the MAC of ``kind`` over ``parts``."""
    if not isinstance(mac, str) or not hmac.compare_digest(mac, sign(secret, kind, *parts)):
        raise TokenError(f"refused: the {kind} command is not signed with this cluster's secret")


def verify_fresh(
    secret: bytes, mac: object, issued: object, now: float, kind: str, *parts: Any
) -> None:
    """``verify``, and refuse a command issued more than MAX_AGE_S ago (or in the future)."""
    if (
        not isinstance(issued, (int, float))
        or isinstance(issued, bool)
        or not -30 <= now - issued <= MAX_AGE_S
    ):
        raise TokenError(f"refused: the {kind} command is stale or from the future")
    verify(secret, mac, kind, issued, *parts)
