"""Every name and id that crosses a message, checked in one place.

Each ``check_*`` returns its argument when it is well formed and raises
BadRequest otherwise, so a bad name never reaches a path, a key or a shell.
``\\Z`` ends every pattern: ``$`` would let a trailing newline in.

>>> check_node_name("pi-3")
'pi-3'
>>> check_container_name("web.1")
'web.1'
>>> check_migration_id("m-0123456789ab")
'm-0123456789ab'
>>> check_id("subdir", "..")
Traceback (most recent call last):
...
workers.errors.BadRequest: bad subdir '..': use 1-64 of A-Z a-z 0-9 _ . -
"""

from __future__ import annotations

import re
import secrets

from workers.errors import BadRequest

NODE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}\Z")
CONTAINER_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}\Z")
MIGRATION_ID = re.compile(r"^m-[0-9a-f]{12}\Z")
EVAC_ID = re.compile(r"^e-[0-9a-f]{12}\Z")
ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # a data-plane migration id or subdir


def check_node_name(name: object) -> str:
    """Return ``name`` if it is a valid node name, else raise BadRequest."""
    if not isinstance(name, str) or not NODE_NAME.match(name):
        raise BadRequest(
            f"bad node name {name!r}: use 1-31 lowercase letters, digits and '-', "
            "starting with a letter or digit"
        )
    return name


def check_container_name(name: object) -> str:
    """Return ``name`` if it is a valid container name, else raise BadRequest."""
    if not isinstance(name, str) or not CONTAINER_NAME.match(name):
        raise BadRequest(
            f"bad container name {name!r}: use 1-63 lowercase letters, digits, '.', '_' "
            "or '-', starting with a letter or digit"
        )
    return name


def new_id() -> str:
    """A fresh migration id."""
    return "m-" + secrets.token_hex(6)


def new_evac_id() -> str:
    """A fresh evacuation id."""
    return "e-" + secrets.token_hex(6)


def check_migration_id(mid: object) -> str:
    if not isinstance(mid, str) or not MIGRATION_ID.match(mid):
        raise BadRequest(f"bad migration id {mid!r}: ids look like m-0123456789ab")
    return mid


def check_evac_id(eid: object) -> str:
    if not isinstance(eid, str) or not EVAC_ID.match(eid):
        raise BadRequest(f"bad evacuation id {eid!r}: ids look like e-0123456789ab")
    return eid


def check_id(kind: str, value: str) -> str:
    """Return ``value`` if it is a valid data-plane id or subdir name, else raise BadRequest."""
    if not ID.fullmatch(value) or value in (".", ".."):
        raise BadRequest(f"bad {kind} {value!r:.80}: use 1-64 of A-Z a-z 0-9 _ . -")
    return value
