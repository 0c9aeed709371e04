"""Retrieval tools over the service and Qdrant: ``bge-index``, ``bge-search``, ``bge-eval``.

A client of the service's HTTP API only, through ``bge_client`` (client/); it never
imports ``engine``, ``backends``, ``api`` or ``worker``, so it works the same against a
remote GPU instance.
"""
