"""HTTP over the engine: one module per dialect (OpenAI, Cohere, TEI, Infinity, the
BAAI reranker service, the service's own bge-m3 routes), the app, the CLI.

Imports ``engine`` for every request and ``backends`` only to build the chains at
start (``api.cli``); never ``retrieval`` or ``worker``.
"""

from api.app import create_app

__all__ = ["create_app"]
