"""The infinity backend pools a sentence-transformers folder as sentence-transformers does,
and as the flag backend does."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest

from backends.infinity import InfinityBackend
from engine import Operation, Settings
from tests.fixtures.tiny_models import set_pooling
from tests.integration.test_pooling_equality import DENSE, TEXTS, ours, theirs
from tests.integration.test_pooling_equality import tiny_root as tiny_root  # the fixture

# infinity_emb pins numpy<2: these run in .venv-infinity (make test).
pytestmark = pytest.mark.infinity


def test_infinity_backend_pools_a_mean_folder_as_sentence_transformers(
    tiny_root: Path, tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    """infinity_emb runs sentence-transformers' own modules: already right, and the flag
    backend now agrees with it."""
    folder = set_pooling(shutil.copytree(tiny_root, tmp_path / "mean"), "mean", normalize=True)
    backend = InfinityBackend(
        Settings(embedding_model_name=str(folder), device="cpu", dtype="float32"),
        frozenset({Operation.EMBED}),
    )
    loop.run_until_complete(backend.start())
    try:
        encoding = loop.run_until_complete(backend.encode(TEXTS, DENSE))
    finally:
        loop.run_until_complete(backend.stop())
    assert encoding.dense is not None
    np.testing.assert_allclose(encoding.dense, theirs(folder, TEXTS), atol=1e-5)
    np.testing.assert_allclose(encoding.dense, ours(folder, TEXTS), atol=1e-5)
