"""ssl_options: the TLS settings a broker or backend URL carries."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from tasks.config.broker import ssl_options
from workers.errors import BadRequest


@pytest.mark.parametrize(
    "url, want",
    [
        ("redis://h:6379/0", None),
        ("amqp://guest:guest@h//", None),
        ("unix:///var/lib/ferry/redis.sock", None),
        ("rediss://h:6379/0", {"ssl_cert_reqs": ssl.CERT_REQUIRED}),
        ("rediss://u:p@h/0?ssl_cert_reqs=required", {"ssl_cert_reqs": ssl.CERT_REQUIRED}),
        ("rediss://h/0?ssl_cert_reqs=CERT_REQUIRED", {"ssl_cert_reqs": ssl.CERT_REQUIRED}),
        ("rediss://h/0?ssl_cert_reqs=optional", {"ssl_cert_reqs": ssl.CERT_OPTIONAL}),
        ("rediss://h/0?ssl_cert_reqs=none", {"ssl_cert_reqs": ssl.CERT_NONE}),
    ],
)
def test_the_url_says_what_tls_to_use(url: str, want: dict[str, object] | None) -> None:
    assert ssl_options(url) == want


def test_certificate_files_are_passed_on_when_they_exist(tmp_path: Path) -> None:
    for name in ("ca.crt", "me.crt", "me.key"):
        (tmp_path / name).write_text("-")
    url = (
        f"rediss://h/0?ssl_ca_certs={tmp_path}/ca.crt&ssl_certfile={tmp_path}/me.crt"
        f"&ssl_keyfile={tmp_path}/me.key"
    )
    assert ssl_options(url) == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_ca_certs": f"{tmp_path}/ca.crt",
        "ssl_certfile": f"{tmp_path}/me.crt",
        "ssl_keyfile": f"{tmp_path}/me.key",
    }


@pytest.mark.parametrize(
    "query, says",
    [
        ("ssl_cert_reqs=maybe", "bad ssl_cert_reqs='maybe'"),
        (
            "ssl_ca_certs=/nonexistent/ca.crt",
            "ssl_ca_certs=/nonexistent/ca.crt in a rediss:// URL: no such file",
        ),
    ],
)
def test_a_bad_tls_option_is_a_clear_error(query: str, says: str) -> None:
    with pytest.raises(BadRequest, match=says.replace("(", r"\(")):
        ssl_options(f"rediss://h/0?{query}")
