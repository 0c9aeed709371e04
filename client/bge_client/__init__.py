"""A typed client of bge-serve: bge-m3 dense, sparse (lexical) and ColBERT vectors,
bge-m3's own three-way score, cross-encoder reranking and tokens, over the service's
native routes, with the server's batch limit, its ``Retry-After`` and one sparse index
space per client kept for you.

    from bge_client import Client

    with Client("http://localhost:8011") as bge:
        vectors = bge.hybrid(["What is BGE M3?"]).vectors

Framework components live in ``bge_client.langchain``, ``bge_client.llama_index`` and
``bge_client.haystack`` (extras of the same names). The errors are drawn in one tree in
``bge_client._errors``.

It imports httpx, msgspec and itself only (the framework modules their framework too),
never the server's packages (engine, backends, api, worker) nor the retrieval tools,
which import it: it installs and runs where the server's stack is not.
"""

from __future__ import annotations

from bge_client._client import DEFAULT_TIMEOUT_S, DEFAULT_URL, AsyncClient, Client
from bge_client._errors import (
    ApiError,
    AuthenticationError,
    BgeError,
    ConnectionFailedError,
    DeadlineExceededError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    ProtocolError,
    ServerError,
    SparseSpaceMismatch,
    UnavailableError,
)
from bge_client._types import (
    DenseEmbeddings,
    Health,
    HybridEmbeddings,
    HybridVector,
    Info,
    M3Score,
    M3Scores,
    QuantizedEmbeddings,
    QuantizedFormat,
    QuantizedHybridEmbeddings,
    QuantizedHybridVector,
    Ranked,
    Ranking,
    SparseEmbeddings,
    SparseMapping,
    SparseSpace,
    SparseVector,
    Token,
    Usage,
    WireFormat,
)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DEFAULT_URL",
    "ApiError",
    "AsyncClient",
    "AuthenticationError",
    "BgeError",
    "Client",
    "ConnectionFailedError",
    "DeadlineExceededError",
    "DenseEmbeddings",
    "Health",
    "HybridEmbeddings",
    "HybridVector",
    "Info",
    "InvalidRequestError",
    "M3Score",
    "M3Scores",
    "NotFoundError",
    "OverloadedError",
    "PayloadTooLargeError",
    "ProtocolError",
    "QuantizedEmbeddings",
    "QuantizedFormat",
    "QuantizedHybridEmbeddings",
    "QuantizedHybridVector",
    "Ranked",
    "Ranking",
    "ServerError",
    "SparseEmbeddings",
    "SparseMapping",
    "SparseSpace",
    "SparseSpaceMismatch",
    "SparseVector",
    "Token",
    "UnavailableError",
    "Usage",
    "WireFormat",
]
