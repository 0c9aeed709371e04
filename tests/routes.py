"""The service's POST routes, by the error body they answer in."""

from __future__ import annotations

# The OpenAI envelope (the bare /rerank paths too: a body they cannot read names no
# dialect).
ENVELOPE_POST_ROUTES = [
    "/v1/embeddings",
    "/v1/sparse-embeddings",
    "/v1/hybrid-embeddings",
    "/v1/m3-score",
    "/v1/rerank",
    "/v2/rerank",
    "/v1/embed",
    "/v2/embed",
    "/rerank",
    "/reranker/rerank",
    "/embeddings",
    "/rerank/batch",
]
# TEI's {"error", "error_type"}.
TEI_POST_ROUTES = [
    "/embed",
    "/",
    "/embed_sparse",
    "/embed_all",
    "/predict",
    "/similarity",
    "/invocations",
    "/tokenize",
    "/decode",
]
