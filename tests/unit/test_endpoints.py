"""What is not set follows what is: one FERRY_BROKER_URL never splits a cluster."""

from __future__ import annotations

import re

import pytest

from tasks.core.endpoints import parse_sentinel, plan
from workers.errors import BadRequest

SOCK = "/var/lib/ferry/redis.sock"


@pytest.mark.parametrize(
    "given,broker,backend,redis,embedded",
    [
        ({}, f"redis+socket://{SOCK}", f"redis+socket://{SOCK}", f"unix://{SOCK}", True),
        (
            {"broker": "redis://h:6379/0"},
            "redis://h:6379/0",
            "redis://h:6379/0",
            "redis://h:6379/0",
            False,
        ),
        (
            {"broker": "rediss://u:p@h:6380/1?ssl_cert_reqs=none"},
            "rediss://u:p@h:6380/1?ssl_cert_reqs=none",
            "rediss://u:p@h:6380/1?ssl_cert_reqs=none",
            "rediss://u:p@h:6380/1?ssl_cert_reqs=none",
            False,
        ),
        (
            {"broker": "redis+socket:///r.sock"},
            "redis+socket:///r.sock",
            "redis+socket:///r.sock",
            "unix:///r.sock",
            False,
        ),
        ({"redis": "redis://h/2"}, "redis://h/2", "redis://h/2", "redis://h/2", False),
        (
            {"redis": "unix:///r.sock"},
            "redis+socket:///r.sock",
            "redis+socket:///r.sock",
            "unix:///r.sock",
            False,
        ),
        (
            {"broker": "amqp://h//", "redis": "redis://h/0"},
            "amqp://h//",
            "redis://h/0",
            "redis://h/0",
            False,
        ),
        (
            {"broker": "redis://a/0", "backend": "redis://b/0"},
            "redis://a/0",
            "redis://b/0",
            "redis://a/0",
            False,
        ),
    ],
)
def test_what_is_not_set_follows_what_is(given, broker, backend, redis, embedded) -> None:  # type: ignore[no-untyped-def]
    e = plan(**given, embedded_sock=SOCK)
    assert (e.broker, e.backend, e.redis, e.embedded) == (broker, backend, redis, embedded)


@pytest.mark.parametrize(
    "given,words",
    [
        (
            {"broker": "amqp://guest:hunter2@h//"},
            "RabbitMQ, where ferry cannot keep its records: set FERRY_REDIS_URL",
        ),
        ({"broker": "pyamqp://h//"}, "set FERRY_REDIS_URL"),
        ({"broker": "sqs://"}, "set FERRY_REDIS_URL"),
        ({"redis": "amqp://h//"}, "FERRY_REDIS_URL must be a Redis URL"),
    ],
)
def test_no_redis_to_follow_is_refused(given, words) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BadRequest, match=words) as exc:
        plan(**given, embedded_sock=SOCK)
    assert "hunter2" not in str(exc.value)  # a password in the URL is not repeated


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("sentinel://s1:26379", "names its master"),
        ("sentinel://s1:26379/ferry/0/x", "names its master"),
        ("sentinel://s1:port/ferry", "bad Sentinel address 's1:port'"),
        ("sentinel://s1:0/ferry", "bad Sentinel address 's1:0'"),
        ("sentinel://s1,,s2/ferry", "bad Sentinel address ''"),
        ("sentinel://s1/ferry/zero", "bad database 'zero'"),
    ],
)
def test_a_bad_sentinel_url_is_refused_before_anything_starts(url: str, why: str) -> None:
    for given in ({"broker": url}, {"redis": url}, {"broker": "redis://h/0", "backend": url}):
        with pytest.raises(BadRequest, match=re.escape(why)):
            plan(**given)


def test_a_sentinel_url_in_kombu_s_form() -> None:
    s = parse_sentinel("sentinel://u:p%40ss@a,b:26380/ferry/4")
    assert s.hosts == (("a", 26379), ("b", 26380)) and (s.master, s.db) == ("ferry", 4)
    assert s.kombu == "sentinel://u:p%40ss@a:26379/4;sentinel://u:p%40ss@b:26380/4"
    e = plan(broker="sentinel://a/ferry")
    assert e.redis == e.backend == e.broker == "sentinel://a/ferry"


def test_celery_gets_kombu_s_sentinel_form_and_the_master_s_name() -> None:
    from tasks.config.settings import Settings
    from tasks.messaging.app import make_app

    url = "sentinel://:pw@a:26379,b:26380/ferry/2"
    app = make_app(Settings(broker_url=url, result_backend=url, redis_url=url, secret="x"))
    assert app.conf.broker_url == "sentinel://:pw@a:26379/2;sentinel://:pw@b:26380/2"
    assert app.conf.result_backend == app.conf.broker_url
    assert app.conf.broker_transport_options["master_name"] == "ferry"
    assert app.conf.result_backend_transport_options["master_name"] == "ferry"
    plain = make_app(Settings(broker_url="redis://h/0", secret="x"))
    assert "master_name" not in plain.conf.broker_transport_options
