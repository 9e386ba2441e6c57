"""Signed Celery messages: only holders of a trusted key can give ferry work.

With signing on, every task and remote-control message a ferry process sends
is signed with its node's private key (Celery's ``auth`` serializer), and
every ferry process accepts only messages whose signature verifies against a
certificate in its cert store. An unsigned message, one signed by a key whose
certificate is not in the store, or one whose body was changed in transit is
refused before any ferry code sees it.

What signing covers, and what it does not (docs/security.md):

- The signature covers the message body: the task's arguments. Celery keeps
  the task name and id in message headers, which are not signed, so a broker
  user can replay a signed body under another task name. ferry's tasks take
  ids and re-check the migration record, which makes a replay a no-op.
- Task results and Flower's events stay JSON, unsigned: ferry never acts on
  either.
- Migration records and the node registry live in the state store
  (FERRY_REDIS_URL), not in messages: signing does not protect them, the
  Redis ACL and TLS do.

Celery's support is process-wide: ``setup_security`` registers the serializer
and turns off every other task serializer for the whole process, which fits
ferry's one app per process.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from workers.errors import BadRequest

if TYPE_CHECKING:
    from celery import Celery

DIGEST = "sha256"


def enable_signing(app: Celery, key: Path, cert: Path, store: Path) -> None:
    """Sign what ``app`` sends with ``key``; accept only messages signed by a cert in ``store``.

    ``key`` is this process's RSA private key (PEM, readable by its owner
    only), ``cert`` its certificate, and ``store`` a directory of the
    certificates (``*.pem``) of every node and client allowed to send work.
    """
    _check_private(key)
    for path in (cert, store):
        if not path.exists():
            raise BadRequest(f"message signing: {path} does not exist")
    if not store.is_dir() or not any(store.glob("*.pem")):
        raise BadRequest(f"message signing: {store} must be a directory of *.pem certificates")
    app.conf.update(
        task_serializer="auth",
        accept_content=["auth"],
        # Results and events stay JSON: nothing in ferry acts on them.
        result_serializer="json",
        result_accept_content=["json"],
        event_serializer="json",
        security_key=str(key),
        security_certificate=str(cert),
        security_cert_store=str(store / "*.pem"),
        security_digest=DIGEST,
    )
    app.setup_security(
        allowed_serializers=["json"],
        key=str(key),
        cert=str(cert),
        store=str(store / "*.pem"),
        digest=DIGEST,
        serializer="json",
    )


def _check_private(key: Path) -> None:
    try:
        st = key.stat()
    except OSError as exc:
        raise BadRequest(f"message signing: cannot read the key {key}: {exc.strerror}") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise BadRequest(
            f"message signing: {key} is readable by others "
            f"(mode {stat.S_IMODE(st.st_mode):o}): chmod 600 {key}"
        )
    if st.st_uid != os.geteuid():
        raise BadRequest(
            f"message signing: {key} belongs to uid {st.st_uid}, not to this "
            "process: whoever can replace it can sign work"
        )
