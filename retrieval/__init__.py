"""Retrieval tools over the service and Qdrant: ``bge-index``, ``bge-search``, ``bge-eval``.

A client of the service's HTTP API only (it never imports ``engine``, ``backends``
or ``api``), so it works the same against a remote GPU instance.
"""
