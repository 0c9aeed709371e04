"""bge-m3's own relevance scores of documents against a query, from its three heads.

The numbers of FlagEmbedding's ``BGEM3FlagModel.compute_score(pairs,
weights_for_different_modes=[w_dense, w_sparse, w_colbert])``, computed on the vectors
the service already encodes (one hybrid pass per text), so any backend that serves
``lexical_colbert`` scores them the same:

- dense: the dot product of the normalised dense vectors (their cosine);
- sparse: ``compute_lexical_matching_score``, the sum over the token ids both texts
  have of the product of their lexical weights (token-id space: hashed indices could
  collide and add a product FlagEmbedding never counts);
- ColBERT: for each query vector the best dot product with a document vector, summed
  and divided by the query's vector count (``colbert_score``);
- ``sparse+dense``: ``(w_sparse * sparse + w_dense * dense) / (w_sparse + w_dense)``;
- ``colbert+sparse+dense``: the three weighted, over the sum of the weights.

One departure: FlagEmbedding's batched ``compute_score`` takes the ColBERT maximum over
a padded batch, where a shorter document's padding vectors (zeros) add a candidate 0,
so its number for a document can depend on its batch neighbours whenever every dot
product of a query vector with that document is negative. Here each document is scored
on its own vectors only, as ``colbert_score`` and a one-pair ``compute_score`` do.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from engine.types import ColbertMatrix, DenseMatrix, M3Scores, M3Weights, SparseVector

__all__ = ["DEFAULT_WEIGHTS", "colbert_score", "dense_scores", "lexical_score", "m3_scores"]

DEFAULT_WEIGHTS = M3Weights(dense=0.4, sparse=0.2, colbert=0.4)
"""The weights FlagEmbedding's README scores with (``compute_score`` itself, given none,
weighs the three alike)."""


def dense_scores(query: NDArray[np.float32], documents: DenseMatrix) -> NDArray[np.float64]:
    """Each document's dense vector's dot product with the query's."""
    return documents.astype(np.float64) @ query.astype(np.float64)


def lexical_score(query: SparseVector, document: SparseVector) -> float:
    """Sum of weight products over the token ids both have; indices unique, ascending."""
    _, in_query, in_document = np.intersect1d(
        query.indices, document.indices, assume_unique=True, return_indices=True
    )
    products = query.values[in_query].astype(np.float64) * document.values[in_document]
    return float(products.sum())


def colbert_score(query: ColbertMatrix, document: ColbertMatrix) -> float:
    """Mean over the query's vectors of each one's best dot product with the document's."""
    if query.shape[0] == 0 or document.shape[0] == 0:
        return 0.0
    similarity = query.astype(np.float64) @ document.astype(np.float64).T
    return float(similarity.max(axis=1).sum() / query.shape[0])


def m3_scores(
    query: tuple[NDArray[np.float32], SparseVector, ColbertMatrix],
    documents: tuple[DenseMatrix, Sequence[SparseVector], Sequence[ColbertMatrix]],
    weights: M3Weights,
    prompt_tokens: int,
) -> M3Scores:
    """Every score of each document, from the query's and the documents' (dense, sparse in
    token-id space, ColBERT) vectors."""
    query_dense, query_sparse, query_colbert = query
    dense_matrix, sparse_vectors, colbert_matrices = documents
    dense = dense_scores(query_dense, dense_matrix)
    sparse = np.array([lexical_score(query_sparse, d) for d in sparse_vectors], dtype=np.float64)
    colbert = np.array(
        [colbert_score(query_colbert, d) for d in colbert_matrices], dtype=np.float64
    )
    two = weights.dense + weights.sparse
    with np.errstate(invalid="ignore", divide="ignore"):
        # Both weights zero: FlagEmbedding's 0 / 0, NaN, which the API answers as null.
        sparse_dense = (sparse * weights.sparse + dense * weights.dense) / two
    total = two + weights.colbert
    combined = (colbert * weights.colbert + sparse * weights.sparse + dense * weights.dense) / total
    return M3Scores(
        dense=dense,
        sparse=sparse,
        colbert=colbert,
        sparse_dense=sparse_dense,
        colbert_sparse_dense=combined,
        weights=weights,
        prompt_tokens=prompt_tokens,
    )
