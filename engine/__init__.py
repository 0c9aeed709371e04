"""What the service means: types, the Backend protocol, settings, errors and operations.

Knows nothing about HTTP; the API layer turns requests into calls on
:class:`InferenceEngine` and its answers back into a dialect.
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
from engine.inference import EngineHealth, InferenceEngine
from engine.settings import Settings, load_settings
from engine.sparse_mapping import SparseMapper, hashed_index
from engine.types import (
    Encoding,
    HybridEmbeddings,
    ModelInfo,
    Operation,
    Output,
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
