"""Who may call: API keys (``API_KEY``) and browser origins (``CORS_ORIGINS``).

A key comes as ``Authorization: Bearer <key>`` (what the openai, cohere and TEI
clients send) or ``X-API-Key: <key>``. It is compared with every configured key in
constant time, so the answer's timing says nothing about how much of a key was
right. Health, metrics and docs stay open for probes and scrapers unless
``PROTECT_METRICS`` is on. Keys are never logged.
"""

from __future__ import annotations

import hmac
from typing import Any

from litestar.config.cors import CORSConfig
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler

from engine.settings import Settings

__all__ = ["API_KEY_HEADER", "WWW_AUTHENTICATE", "cors_config", "key_guard"]

API_KEY_HEADER = "X-API-Key"
WWW_AUTHENTICATE = 'Bearer realm="bge-serve"'
# /ping: TEI's SageMaker health check, which carries no key (TEI leaves it open too).
_OPEN_PATHS = ("/health", "/metrics", "/docs", "/ping")
_SHOWN_SCHEME_CHARS = 16


def _is_open(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in _OPEN_PATHS)


def _presented(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    scheme, _, credentials = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return connection.headers.get(API_KEY_HEADER.lower()) or None


def _missing_key(authorization: str | None) -> str:
    if not authorization or not authorization.strip():
        return (
            f"an API key is required: send Authorization: Bearer <key> or {API_KEY_HEADER}: <key>"
        )
    scheme, _, credentials = authorization.strip().partition(" ")
    # The scheme is named, never the value: a bare key sent without "Bearer " is a secret.
    if scheme.lower() == "bearer":
        sent = "no key after Bearer"
    elif credentials.strip() and scheme.isalpha() and len(scheme) <= _SHOWN_SCHEME_CHARS:
        sent = f"a {scheme} credential"
    else:
        sent = "a value without a scheme"
    return (
        f"Authorization carries {sent}: send Authorization: Bearer <key> (or "
        f"{API_KEY_HEADER}: <key>) instead"
    )


def key_guard(settings: Settings) -> Any:
    """A Litestar guard that lets a request through only with one of ``API_KEY``'s keys."""
    keys = [key.encode() for key in settings.api_key]

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        if not settings.protect_metrics and _is_open(connection.url.path):
            return
        presented = _presented(connection)
        if presented is None:
            raise NotAuthorizedException(
                detail=_missing_key(connection.headers.get("authorization")),
                headers={"WWW-Authenticate": WWW_AUTHENTICATE},
            )
        candidate = presented.encode()
        # Every key is compared, matched or not: the time taken does not depend on which.
        matched = False
        for key in keys:
            matched |= hmac.compare_digest(candidate, key)
        if not matched:
            raise NotAuthorizedException(
                detail="the API key is not valid",
                headers={"WWW-Authenticate": f'{WWW_AUTHENTICATE}, error="invalid_token"'},
            )

    return guard


def cors_config(settings: Settings) -> CORSConfig | None:
    if not settings.cors_origins:
        return None
    return CORSConfig(
        allow_origins=list(settings.cors_origins),
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", API_KEY_HEADER],
        expose_headers=["Retry-After", "x-compute-tokens"],
        max_age=600,
    )
