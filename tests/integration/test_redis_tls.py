"""ferry over rediss://: a real TLS Redis with an ACL user, a real Celery worker.

The Redis runs with the ACL rule of ops/ansible's head role and a CA and
server certificate made here with the openssl CLI. Clients that trust another
CA, or that speak plain text, are refused.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery.contrib.testing.worker import start_worker

from tasks.config.broker import connect, resolve
from tasks.config.settings import Settings
from tasks.core.migration import Migration
from tasks.messaging.app import make_app
from tasks.store.migrations import Store
from tests.conftest import need
from tests.integration.helpers import free_port
from workers.ids import new_id

ROOT = Path(__file__).resolve().parents[2]
ACL_TEMPLATE = ROOT / "ops/ansible/roles/head/templates/redis-ferry.conf.j2"
REDIS_CANDIDATES = ("/usr/bin/redis-server", shutil.which("redis-server"))


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d: Path, name: str) -> None:
    openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.crt",
        "-days",
        "2",
        "-subj",
        f"/CN=ferry test {name}",
        cwd=d,
    )


def make_server_cert(d: Path) -> None:
    openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
        cwd=d,
    )
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        cwd=d,
    )


def acl_line(user: str, password: str) -> str:
    """The ACL rule the Ansible head role gives Redis, for ``user``."""
    rule = next(ln for ln in ACL_TEMPLATE.read_text().splitlines() if ln.startswith("user {{"))
    return re.sub(
        r"\{\{ ferry_redis_password \}\}",
        password,
        re.sub(r"\{\{ ferry_redis_user \}\}", user, rule),
    )


def start_tls_redis(
    binary: str, d: Path, port: int, password: str
) -> subprocess.Popen[bytes] | None:
    """A TLS-only Redis on ``port``; None if this binary was built without TLS."""
    conf = d / "redis.conf"
    conf.write_text(
        "\n".join(
            [
                "port 0",
                f"tls-port {port}",
                "bind 127.0.0.1",
                f"dir {d}",
                'save ""',
                "appendonly no",
                f"tls-cert-file {d}/server.crt",
                f"tls-key-file {d}/server.key",
                f"tls-ca-cert-file {d}/ca.crt",
                "tls-auth-clients no",
                "user default off",
                acl_line("ferry", password),
                "",
            ]
        )
    )
    proc = subprocess.Popen([binary, str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None  # "TLS support not available" and friends: exits at once
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"{binary} did not listen on {port}")


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    need(shutil.which("openssl") is not None, "the openssl CLI is not installed")
    d = tmp_path_factory.mktemp("tls")
    make_ca(d, "ca")
    make_ca(d, "rogue")
    make_server_cert(d)
    password = secrets.token_hex(16)
    port = free_port()
    proc = None
    for binary in dict.fromkeys(c for c in REDIS_CANDIDATES if c):
        proc = start_tls_redis(binary, d, port, password)
        if proc:
            break
    need(proc is not None, "no redis-server built with TLS (Debian's redis-server 7 is)")
    assert proc is not None
    base = f"ferry:{password}@localhost:{port}/0"
    try:
        yield {
            "url": f"rediss://{base}?ssl_cert_reqs=required&ssl_ca_certs={d}/ca.crt",
            "rogue": f"rediss://{base}?ssl_cert_reqs=required&ssl_ca_certs={d}/rogue.crt",
            "plain": f"redis://{base}",
            "dir": str(d),
        }
    finally:
        proc.kill()
        proc.wait()


def settings(url: str, tmp: Path) -> Settings:
    return resolve(Settings(state_dir=tmp, broker_url=url, redis_url=url, secret="tls-test"))


def test_the_state_store_works_over_tls(tls: dict[str, str], tmp_path: Path) -> None:
    store = Store(connect(settings(tls["url"], tmp_path)))
    m = Migration(id=new_id(), container="web", src="n1", dst="n2", created=time.time())
    store.create(m)
    assert store.get(m.id).container == "web"
    assert m.id in store.ids()


def test_a_real_worker_runs_a_task_over_tls(tls: dict[str, str], tmp_path: Path) -> None:
    app = make_app(settings(tls["url"], tmp_path))

    @app.task(name="ferry.test.echo")
    def echo(x: str) -> str:
        return x + "!"

    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        res = app.send_task("ferry.test.echo", args=("over tls",))
        assert res.get(timeout=20) == "over tls!"
        # remote control (fanout over pub/sub) passes the ACL too
        assert app.control.ping(timeout=2)


def test_flower_reads_queue_lengths_over_tls(tls: dict[str, str], tmp_path: Path) -> None:
    from flower.utils.broker import Broker

    app = make_app(settings(tls["url"], tmp_path))
    assert app.conf.broker_use_ssl["ssl_ca_certs"].endswith("/ca.crt")
    app.send_task("ferry.test.nobody", queue="node.flower-test")
    with app.connection() as conn:
        uri = conn.as_uri(include_password=True)
    broker = Broker(
        uri,
        broker_options=app.conf.broker_transport_options,
        broker_use_ssl=app.conf.broker_use_ssl,
    )
    queues = asyncio.run(broker.queues(["node.flower-test"]))
    assert queues == [{"name": "node.flower-test", "messages": 1}]


def test_a_client_that_trusts_another_ca_is_refused(tls: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        connect(settings(tls["rogue"], tmp_path)).ping()
    app = make_app(settings(tls["rogue"], tmp_path))
    refused = pytest.raises(Exception, match="certificate verify failed")
    with app.connection_for_write() as conn, refused:
        conn.ensure_connection(max_retries=0)


def test_plain_text_gets_nothing(tls: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(redis.ConnectionError):
        connect(settings(tls["plain"], tmp_path)).ping()


def test_the_default_user_is_off(tls: dict[str, str], tmp_path: Path) -> None:
    url = tls["url"].replace("rediss://ferry:", "rediss://default:")
    with pytest.raises(redis.AuthenticationError):
        connect(settings(url, tmp_path)).ping()
