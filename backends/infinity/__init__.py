"""In-process infinity_emb backend: dense embeddings and rerank, batched by infinity."""

from backends.infinity.backend import InfinityBackend

__all__ = ["InfinityBackend"]
