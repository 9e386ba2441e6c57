"""Signed messages through a real Redis broker and a real Celery worker.

A worker with signing on runs what a trusted key signed, and refuses the rest:
unsigned tasks, tasks signed by a key outside its cert store, tampered bodies,
and unsigned remote-control commands.
"""

from __future__ import annotations

import base64
import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from kombu.serialization import registry

from tasks.config.settings import Settings
from tasks.messaging.app import make_app
from tasks.messaging.signing import enable_signing
from tests.conftest import CI, cluster_env, need
from workers.errors import BadRequest

try:  # celery[auth]: Celery's signing needs cryptography
    from celery.security.certificate import Certificate
    from celery.security.key import PrivateKey
    from celery.security.serialization import SecureSerializer
except ImportError as exc:
    if CI:
        raise
    pytest.skip(f"pip install -e '.[test]': {exc}", allow_module_level=True)


def make_key(d: Path, name: str) -> tuple[Path, Path]:
    key, cert = d / f"{name}.key", d / f"{name}.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            f"/CN=ferry {name}",
        ],
        check=True,
        capture_output=True,
    )
    key.chmod(0o600)
    return key, cert


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    need(shutil.which("openssl") is not None, "the openssl CLI is not installed")
    d = tmp_path_factory.mktemp("keys")
    key, cert = make_key(d, "node")
    rogue_key, rogue_cert = make_key(d, "rogue")
    store = d / "trusted"
    store.mkdir()
    shutil.copy(cert, store / "node.pem")
    return {
        "key": key,
        "cert": cert,
        "store": store,
        "rogue_key": rogue_key,
        "rogue_cert": rogue_cert,
    }


@pytest.fixture(scope="module")
def kombu_state() -> Iterator[None]:
    """Celery's signing changes kombu's process-wide serializer registry: put it back."""
    default = registry.type_to_name[registry._default_content_type]
    disabled = set(registry._disabled_content_types)
    yield
    registry._set_default_serializer(default)
    registry._disabled_content_types = disabled


@pytest.fixture(scope="module")
def signed(
    redis_url: str,
    keys: dict[str, Path],
    kombu_state: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    """A signing worker on a queue of its own, and what its task saw."""
    env = {**cluster_env(redis_url), "FERRY_STATE_DIR": str(tmp_path_factory.mktemp("state"))}
    settings = Settings.from_env(env)
    queue = f"test.signing.{secrets.token_hex(4)}"
    seen: list[str] = []

    def app_for(signing: bool) -> Celery:
        app = make_app(settings)
        app.conf.task_default_queue = queue
        if signing:
            enable_signing(app, keys["key"], keys["cert"], keys["store"])
        return app

    app = app_for(signing=True)

    @app.task(name="ferry.test.record")
    def record(word: str) -> str:
        seen.append(word)
        return word

    hostname = f"signing-{uuid.uuid4().hex[:8]}@test"
    with start_worker(
        app, pool="solo", perform_ping_check=False, shutdown_timeout=10, hostname=hostname
    ):
        yield {
            "app": app,
            "plain": app_for(signing=False),
            "seen": seen,
            "queue": queue,
            "hostname": hostname,
        }


def canary(signed: dict[str, Any]) -> None:
    """A signed task sent after the others: once it ran, the worker had its go at them."""
    word = f"canary-{secrets.token_hex(3)}"
    assert signed["app"].send_task("ferry.test.record", args=(word,)).get(timeout=20) == word


def publish_raw(signed: dict[str, Any], body: bytes, word: str) -> None:
    """Publish a task message for ``ferry.test.record(word)`` with ``body`` as its payload."""
    app = signed["app"]
    msg = app.amqp.as_task_v2(str(uuid.uuid4()), "ferry.test.record", args=(word,))
    with app.producer_or_acquire() as producer:
        producer.publish(
            body,
            routing_key=signed["queue"],
            exchange="",
            serializer=None,
            content_type="application/data",
            content_encoding="utf-8",
            headers=msg.headers,
            **msg.properties,
        )


def sign(body: Any, key: Path, cert: Path) -> bytes:
    s = SecureSerializer(PrivateKey(key.read_text()), Certificate(cert.read_text()), None)
    return str(s.serialize(body)).encode()


def test_a_signed_task_round_trips_through_a_real_worker(signed: dict[str, Any]) -> None:
    res = signed["app"].send_task("ferry.test.record", args=("signed",))
    assert res.get(timeout=20) == "signed"
    assert "signed" in signed["seen"]


def test_an_unsigned_task_is_refused(signed: dict[str, Any]) -> None:
    signed["plain"].send_task("ferry.test.record", args=("unsigned",), queue=signed["queue"])
    canary(signed)
    assert "unsigned" not in signed["seen"]


def test_a_task_signed_by_an_untrusted_key_is_refused(
    signed: dict[str, Any], keys: dict[str, Path]
) -> None:
    body = signed["app"].amqp.as_task_v2("x", "ferry.test.record", args=("forged",)).body
    publish_raw(signed, sign(body, keys["rogue_key"], keys["rogue_cert"]), "forged")
    canary(signed)
    assert "forged" not in signed["seen"]


def test_a_tampered_body_is_refused(signed: dict[str, Any], keys: dict[str, Path]) -> None:
    body = signed["app"].amqp.as_task_v2("x", "ferry.test.record", args=("honest",)).body
    packed = base64.b64decode(sign(body, keys["key"], keys["cert"]))
    assert b'"honest"' in packed
    publish_raw(signed, base64.b64encode(packed.replace(b'"honest"', b'"Honest"')), "Honest")
    canary(signed)
    assert "Honest" not in signed["seen"]


def test_an_unsigned_shutdown_is_ignored(signed: dict[str, Any]) -> None:
    signed["plain"].control.broadcast("shutdown", destination=[signed["hostname"]])
    # deliberate: a broadcast is not queued behind the canary, so give the worker time to
    # (wrongly) obey it first
    time.sleep(1)
    canary(signed)


def test_signing_refuses_a_key_others_can_read(keys: dict[str, Path], tmp_path: Path) -> None:
    loose = tmp_path / "loose.key"
    shutil.copy(keys["key"], loose)
    loose.chmod(0o644)
    with pytest.raises(BadRequest, match="readable by others"):
        enable_signing(Celery(set_as_current=False), loose, keys["cert"], keys["store"])
    with pytest.raises(BadRequest, match="directory of"):
        enable_signing(Celery(set_as_current=False), keys["key"], keys["cert"], keys["cert"])
