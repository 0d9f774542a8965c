"""The Celery app (`celery -A tasks.app ...`). Broker: FARM_REDIS_URL, else the farm's own Redis."""

from __future__ import annotations

from celery import Celery

from farm.config.redis_connection import redis_url
from farm.config.settings import Settings, load_settings
from tasks.config import Signing, celery_config, signing_config


def broker_url(settings: Settings) -> str:
    """FARM_REDIS_URL (with FARM_REDIS_PASSWORD and FARM_REDIS_TLS_*), else the farm's own Redis, password
    included: see farm/config/redis_connection.py."""
    return redis_url(settings)


def signing_of(settings: Settings) -> Signing | None:
    """The message-signing setup the settings ask for (FARM_SIGNING_*), or None: plain JSON messages."""
    if settings.signing_key is None or settings.signing_cert is None or settings.signing_cert_store is None:
        return None
    return Signing(settings.signing_key, settings.signing_cert, settings.signing_cert_store)


def require_own_cert_trusted(signing: Signing) -> None:
    """A farm whose certificate is not in its own store would refuse every message it sends: say so at
    start, not as a stream of refused steps."""
    from celery.exceptions import ImproperlyConfigured, SecurityError
    from celery.security.certificate import Certificate, FSCertStore

    try:
        own = Certificate(signing.cert.read_text())
        store = FSCertStore(str(signing.cert_store))  # every file in a directory must be a certificate
    except SecurityError as exc:
        raise ImproperlyConfigured(f"FARM_SIGNING_CERT or FARM_SIGNING_CERT_STORE: {exc}") from exc
    try:
        store[own.get_id()]
    except SecurityError as exc:
        raise ImproperlyConfigured(
            f"FARM_SIGNING_CERT ({signing.cert}) is not in FARM_SIGNING_CERT_STORE ({signing.cert_store}): "
            "this farm could not read its own messages"
        ) from exc


def make_app(url: str, time_limit_scale: float = 1.0, signing: Signing | None = None) -> Celery:
    """The farm's Celery app; with `signing`, it signs what it sends and accepts only signed messages.

    Signing registers Celery's `auth` serializer in kombu's process-wide registry, so every signing app
    in one process shares the last key given (a farm process has one).
    """
    celery = Celery("farm", include=["tasks.steps"])
    celery.conf.update(celery_config(url, time_limit_scale))
    if signing is not None:
        require_own_cert_trusted(signing)
        celery.conf.update(signing_config(signing))
        # Consumers that name no accept list fall back to kombu's enabled set: JSON only, as by default.
        celery.setup_security(allowed_serializers={"json"})
    return celery


_settings = load_settings()
app = make_app(broker_url(_settings), _settings.time_limit_scale, signing_of(_settings))
