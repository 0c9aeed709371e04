"""Logging, set up once from LOG_LEVEL and LOG_FORMAT, for the service and uvicorn alike.

``json`` writes one JSON object per line (what log shippers parse without rules).
Nothing here logs request bodies or headers: input texts and API keys stay out of
the log; uvicorn's access log records method, path and status only.
"""

from __future__ import annotations

import json
import logging
import logging.config
import time
from typing import Any

from engine.settings import Settings

__all__ = ["JsonFormatter", "configure_logging"]

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(settings: Settings) -> dict[str, Any]:
    """Configure the root logger; returns uvicorn's ``log_config`` so that its loggers
    write through the same handler and format."""
    formatter = (
        {"()": f"{__name__}.JsonFormatter"}
        if settings.log_format == "json"
        else {"format": _TEXT_FORMAT}
    )
    config: dict[str, Any] = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "default": {"class": "logging.StreamHandler", "formatter": "default"},
        },
        "root": {"handlers": ["default"], "level": settings.log_level.upper()},
        "loggers": {
            # uvicorn's loggers pass records up to the root handler.
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": True},
            # httpx logs every remote call at INFO with its URL: noise, and a URL may
            # carry credentials.
            "httpx": {"level": "WARNING"},
        },
    }
    logging.config.dictConfig(config)
    return config
