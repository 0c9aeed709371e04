"""What the service means: types, the Backend protocol, settings, errors and operations.

Knows nothing about HTTP; the API layer turns requests into calls on
:class:`InferenceEngine` and its answers back into a dialect. Imports only the
standard library, numpy, msgspec, redis (the shared cache) and its own modules:
never ``api``, ``backends`` (they implement :class:`Backend` and are handed in),
``retrieval`` or ``worker``.
"""

from engine.backend import Backend, BackendHealth, Capabilities
from engine.errors import (
    BackendFailure,
    EngineError,
    ErrorKind,
    InputTooLarge,
    InvalidInput,
    ModelNotFound,
    Overloaded,
    StartupError,
    Unavailable,
)
from engine.health import EngineHealth
from engine.inference import InferenceEngine
from engine.settings import Settings, load_settings
from engine.sparse_mapping import SparseMapper, hashed_index
from engine.types import (
    Encoding,
    HybridEmbeddings,
    ModelInfo,
    Operation,
    Output,
    PairScores,
    RankedDocument,
    Ranking,
    Scores,
    SparseVector,
    TokenWeights,
)

__all__ = [
    "Backend",
    "BackendFailure",
    "BackendHealth",
    "Capabilities",
    "Encoding",
    "EngineError",
    "EngineHealth",
    "ErrorKind",
    "HybridEmbeddings",
    "InferenceEngine",
    "InputTooLarge",
    "InvalidInput",
    "ModelInfo",
    "ModelNotFound",
    "Operation",
    "Output",
    "Overloaded",
    "PairScores",
    "RankedDocument",
    "Ranking",
    "Scores",
    "Settings",
    "SparseMapper",
    "SparseVector",
    "StartupError",
    "TokenWeights",
    "Unavailable",
    "hashed_index",
    "load_settings",
]
