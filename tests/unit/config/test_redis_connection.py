"""How settings become the one Redis URL every client uses, and the Celery TLS options read from it:
checked as data, no Redis needed (tests/integration/test_redis_tls.py runs them against a TLS server)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis
from pydantic import SecretStr

from farm.config.redis_connection import embedded_password, redis_url, safe_url
from farm.config.settings import Settings
from tasks.config import celery_config


def client_options(url: str) -> dict[str, Any]:
    """What redis-py makes of a URL (no connection is opened)."""
    options: dict[str, Any] = redis.Redis.from_url(url).connection_pool.connection_kwargs
    return options


def test_the_own_redis_url_carries_a_password_generated_once_and_kept_private(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, redis_port=6399)
    url = redis_url(settings)
    password = embedded_password(settings)
    assert len(password) >= 20 and url == f"redis://:{password}@127.0.0.1:6399/0"
    assert (tmp_path / "redis.json").stat().st_mode & 0o077 == 0
    assert redis_url(settings) == url, "the same one every time"
    configured = Settings(home=tmp_path, redis_port=6399, redis_password=SecretStr("s3cret/:@x"))
    assert redis_url(configured) == "redis://:s3cret%2F%3A%40x@127.0.0.1:6399/0"
    assert client_options(redis_url(configured))["password"] == "s3cret/:@x"
    assert password not in safe_url(url) and "s3cret" not in safe_url(redis_url(configured))


def test_farm_redis_password_replaces_the_urls_and_keeps_its_user(tmp_path: Path) -> None:
    given = SecretStr("redis://farm:old@redis.example:6379/2")
    assert redis_url(Settings(home=tmp_path, redis_url=given)) == "redis://farm:old@redis.example:6379/2"
    rotated = Settings(home=tmp_path, redis_url=given, redis_password=SecretStr("new"))
    assert redis_url(rotated) == "redis://farm:new@redis.example:6379/2"
    bare = Settings(home=tmp_path, redis_url=SecretStr("redis://redis:6379/0"), redis_password=SecretStr("p"))
    assert redis_url(bare) == "redis://:p@redis:6379/0"
    assert not (tmp_path / "redis.json").exists(), "nothing generated for someone else's Redis"


def test_tls_settings_make_a_verified_rediss_url_for_redis_py_and_kombu_alike(tmp_path: Path) -> None:
    ca, cert, key = tmp_path / "ca.crt", tmp_path / "client crt.pem", tmp_path / "client.key"
    settings = Settings(
        home=tmp_path,
        redis_url=SecretStr("redis://:pw@redis:6379/0?ssl_cert_reqs=none&health_check_interval=5"),
        redis_tls_ca=ca,
        redis_tls_cert=cert,
        redis_tls_key=key,
    )
    url = redis_url(settings)
    parts = urlsplit(url)
    assert parts.scheme == "rediss" and parts.netloc == ":pw@redis:6379"
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert query == {
        "health_check_interval": "5",
        "ssl_ca_certs": str(ca),
        "ssl_certfile": str(cert),
        "ssl_keyfile": str(key),
        "ssl_cert_reqs": "required",
    }, "configuring TLS never keeps a URL's ssl_cert_reqs=none"
    client = client_options(url)
    pool = redis.Redis.from_url(url).connection_pool
    assert pool.connection_class is redis.SSLConnection and client["ssl_certfile"] == str(cert)
    conf = celery_config(url)
    wanted = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": str(ca), "ssl_certfile": str(cert)}
    assert conf["broker_use_ssl"] == conf["redis_backend_use_ssl"] == {**wanted, "ssl_keyfile": str(key)}
    only_ca = Settings(home=tmp_path, redis_url=SecretStr("redis://redis:6379/0"), redis_tls_ca=ca)
    assert redis_url(only_ca) == f"rediss://redis:6379/0?ssl_ca_certs={str(ca).replace('/', '%2F')}" + (
        "&ssl_cert_reqs=required"
    )


def test_a_rediss_url_alone_still_gets_verified_tls_in_celery() -> None:
    """kombu would speak plain text to a rediss:// URL without ssl options: the config always has them."""
    assert celery_config("rediss://:pw@redis.example:6380/0")["broker_use_ssl"] == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED
    }
    relaxed = celery_config("rediss://redis.example:6380/0?ssl_cert_reqs=CERT_OPTIONAL")
    assert relaxed["broker_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_OPTIONAL}
    plain = celery_config("redis://:pw@127.0.0.1:6390/0")
    assert "broker_use_ssl" not in plain and "redis_backend_use_ssl" not in plain
