"""How the farm reaches Redis: one URL carrying the password and the TLS files.

Every client is built from that URL (redis-py's `from_url`, the Celery app, Flower), and worker processes get
it through FARM_REDIS_URL in their environment, never on a command line where `ps` would show the
password. Logs show it through `safe_url` or Celery's own masking.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from farm.config.credentials import kept_credentials
from farm.config.settings import Settings

EMBEDDED_CREDENTIALS = "redis.json"
"""Where, under the farm's home, the own redis-server's generated password is kept."""
TLS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
"""The URL query keys redis-py and kombu both read for a rediss:// connection."""
CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}


def embedded_password(settings: Settings) -> str:
    """FARM_REDIS_PASSWORD, else the one generated for the farm's own redis-server and kept in its home."""
    path = settings.home / EMBEDDED_CREDENTIALS
    _, password, _ = kept_credentials(path, "default", settings.redis_password)
    return password


def local_url(port: int, password: str | None) -> str:
    """The farm's own redis-server on loopback."""
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"redis://{auth}127.0.0.1:{port}/0"


def redis_url(settings: Settings) -> str:
    """The URL every client of this farm uses: FARM_REDIS_URL with FARM_REDIS_PASSWORD and FARM_REDIS_TLS_*
    applied, else the farm's own redis-server with its password."""
    if settings.redis_url is None:
        return local_url(settings.redis_port, embedded_password(settings))
    url = settings.redis_url.get_secret_value()
    if settings.redis_password is not None:
        url = with_password(url, settings.redis_password.get_secret_value())
    return with_tls(url, settings)


def safe_url(url: str) -> str:
    """A Redis URL without its password, for messages."""
    head, sep, tail = url.rpartition("@")
    return f"{head.split('//')[0]}//***@{tail}" if sep else url


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{hostport}"))


def with_tls(url: str, settings: Settings) -> str:
    """Any FARM_REDIS_TLS_* makes the URL rediss:// with those files and the server certificate verified,
    so configuring TLS can never quietly fall back to plain text."""
    files = dict(
        zip(TLS_FILES, (settings.redis_tls_ca, settings.redis_tls_cert, settings.redis_tls_key), strict=True)
    )
    given = {key: str(path) for key, path in files.items() if path is not None}
    if not given:
        return url
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in given and k != "ssl_cert_reqs"]
    query += [*given.items(), ("ssl_cert_reqs", "required")]
    return urlunsplit(parts._replace(scheme="rediss", query=urlencode(query)))


def celery_ssl(url: str) -> dict[str, Any] | None:
    """Celery's `broker_use_ssl` for a rediss:// URL, from its query. Without it kombu would talk plain text
    to a rediss:// URL that carries no ssl_* options; with it the certificate is verified unless the URL
    itself says otherwise."""
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return None
    query = dict(parse_qsl(parts.query))
    reqs = query.get("ssl_cert_reqs", "required").lower().removeprefix("cert_")
    options: dict[str, Any] = {"ssl_cert_reqs": CERT_REQS[reqs]}
    options.update({key: query[key] for key in TLS_FILES if key in query})
    return options
