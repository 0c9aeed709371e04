"""HTTP dialects over the engine: OpenAI, Cohere, and the service's own bge-m3 routes."""

from api.app import create_app

__all__ = ["create_app"]
