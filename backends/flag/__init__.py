"""Native backend: bge-m3 and bge-reranker computed on local torch, equal to FlagEmbedding."""

from backends.flag.backend import FlagBackend

__all__ = ["FlagBackend"]
