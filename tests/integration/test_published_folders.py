"""Model folders as deployments mount them: the published config.json fields (the reranker's
``_name_or_path`` is ``BAAI/bge-m3``), symlinked mounts, a Hugging Face cache snapshot whose
files are symlinks into ``blobs/``, a folder of another name; and ``make demo``'s folders.

Each layout is served by a live bge-serve, and every route that names a model must name it
as the deployment does, and the official clients that name the reranker must get a 200.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cohere
import httpx
import openai
import pytest

from engine.random_weights import MARKER
from tests.conftest import (
    ModelDirs,
    Server,
    free_port,
    serve_command,
    server_env,
    start_server,
    stop_server,
)
from tests.fixtures.tiny_models import build_m3, build_reranker

# The published bge-m3's and bge-reranker-v2-m3's position table (sizes otherwise tiny).
PUBLISHED_POSITIONS = 8194
QUERY = "what is a vector index"
DOCUMENTS = ["a vector index finds the nearest vectors", "paris is in france", "hello world"]


@dataclass(frozen=True)
class Layout:
    models: ModelDirs
    env: dict[str, str]
    embedder: str  # the names the deployment must serve them under
    reranker: str


def published(root: Path) -> ModelDirs:
    """Both folders as BAAI publishes them, under names that say nothing of the models."""
    m3 = build_m3(root / "m3-2024", max_position_embeddings=PUBLISHED_POSITIONS)
    reranker = build_reranker(root / "rr-2024", max_position_embeddings=PUBLISHED_POSITIONS)
    return ModelDirs(m3=m3, reranker=reranker)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> ModelDirs:
    return published(tmp_path_factory.mktemp("published"))


def symlinked_mounts(root: Path, data: ModelDirs) -> Layout:
    """``/models/bge-m3 -> /data/m3-2024``: named after the link, not its target."""
    mounts = root / "models"
    mounts.mkdir()
    (mounts / "bge-m3").symlink_to(data.m3, target_is_directory=True)
    (mounts / "bge-reranker-v2-m3").symlink_to(data.reranker, target_is_directory=True)
    dirs = ModelDirs(m3=mounts / "bge-m3", reranker=mounts / "bge-reranker-v2-m3")
    return Layout(dirs, {}, "BAAI/bge-m3", "BAAI/bge-reranker-v2-m3")


def cached_snapshot(folder: Path, hub: Path, repo: str, revision: str) -> Path:
    """``folder`` laid out as huggingface_hub caches ``repo``: content-addressed blobs, a
    snapshot of relative symlinks into them, and refs/main naming the snapshot."""
    cached = hub / f"models--{repo.replace('/', '--')}"
    snapshot = cached / "snapshots" / revision
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        content = file.read_bytes()
        blob = cached / "blobs" / hashlib.sha256(content).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(content)
        link = snapshot / file.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (cached / "refs").mkdir()
    (cached / "refs" / "main").write_text(revision)
    return snapshot


def hub_cache(root: Path, data: ModelDirs, *, by_hub_id: bool) -> Layout:
    hub = root / "hub"
    m3 = cached_snapshot(data.m3, hub, "BAAI/bge-m3", "5617a9f61b028005a4858fdac845db406aefb181")
    reranker = cached_snapshot(
        data.reranker, hub, "BAAI/bge-reranker-v2-m3", "953dc6f6f85a1b2dbfca4c34a2796e7dde08d41e"
    )
    env = {"HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}
    if by_hub_id:
        # As a deployment that set HF_HOME names them: by hub id, found in the cache.
        env |= {
            "EMBEDDING_MODEL_NAME": "BAAI/bge-m3",
            "RERANKER_MODEL_NAME": "BAAI/bge-reranker-v2-m3",
        }
    return Layout(
        ModelDirs(m3=m3, reranker=reranker), env, "BAAI/bge-m3", "BAAI/bge-reranker-v2-m3"
    )


def other_names(root: Path, data: ModelDirs) -> Layout:
    """A team's own folders keep their own names: nothing invents an organisation."""
    m3 = Path(shutil.copytree(data.m3, root / "our-m3-finetune"))
    reranker = Path(shutil.copytree(data.reranker, root / "our-reranker"))
    return Layout(ModelDirs(m3=m3, reranker=reranker), {}, "our-m3-finetune", "our-reranker")


LAYOUTS: dict[str, Callable[[Path, ModelDirs], Layout]] = {
    "symlinked-mounts": symlinked_mounts,
    "hub-cache-snapshot-folders": lambda root, data: hub_cache(root, data, by_hub_id=False),
    "hub-cache-by-hub-id": lambda root, data: hub_cache(root, data, by_hub_id=True),
    "folders-of-other-names": other_names,
}


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, built: ModelDirs
) -> Iterator[tuple[Layout, Server]]:
    layout = LAYOUTS[request.param](tmp_path_factory.mktemp(request.param), built)
    live = start_server(layout.models, layout.env)
    yield layout, live
    stop_server(live)


def test_every_route_names_the_models_as_the_deployment_does(
    deployment: tuple[Layout, Server],
) -> None:
    layout, live = deployment
    embedder, reranker = layout.embedder, layout.reranker
    with httpx.Client(base_url=live.url, timeout=60) as http:
        assert {m["id"] for m in http.get("/v1/models").json()["data"]} == {embedder, reranker}
        assert {m["id"] for m in http.get("/models").json()["data"]} == {embedder, reranker}
        info = http.get("/info").json()
        assert (info["model_id"], info["served_model_name"]) == (embedder, embedder)
        assert http.get("/reranker/info").json()["model_id"] == reranker
        health = http.get("/health").json()
        assert (health["embedding_model"], health["reranker_model"]) == (embedder, reranker)
        assert health.get("warnings", []) == []
        openai_answer = http.post("/v1/embeddings", json={"input": QUERY, "model": embedder})
        assert openai_answer.json()["model"] == embedder
        infinity = http.post("/embeddings", json={"input": [QUERY], "model": embedder})
        assert infinity.json()["model"] == embedder
        rerank = {"query": QUERY, "documents": DOCUMENTS, "model": reranker}
        assert http.post("/v1/rerank", json=rerank).json()["model"] == reranker
        # The reranker's name is the reranker's: an embedding route refuses it.
        refused = http.post("/v1/embeddings", json={"input": QUERY, "model": reranker})
        assert refused.status_code == 404


def test_official_clients_that_name_the_reranker_get_answers(
    deployment: tuple[Layout, Server],
) -> None:
    layout, live = deployment
    expected = httpx.post(
        f"{live.url}/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS}
    ).json()["results"]
    by_index = {r["index"]: r["relevance_score"] for r in expected}
    v1 = cohere.Client(base_url=live.url, api_key="unused")
    v2 = cohere.ClientV2(base_url=live.url, api_key="unused")
    for answer in (
        v1.rerank(model=layout.reranker, query=QUERY, documents=DOCUMENTS),
        v2.rerank(model=layout.reranker, query=QUERY, documents=DOCUMENTS),
    ):
        assert {r.index: r.relevance_score for r in answer.results} == pytest.approx(by_index)
    oai = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused")
    assert oai.embeddings.create(model=layout.embedder, input=QUERY).model == layout.embedder


def test_two_operations_under_one_name_refuse_to_start(tmp_path: Path, built: ModelDirs) -> None:
    """Both folders mounted as bge-m3 (a copy-paste slip): a start-up error, not a service
    whose reranker no client can name."""
    data = built
    for side, target in (("a", data.m3), ("b", data.reranker)):
        (tmp_path / side).mkdir()
        (tmp_path / side / "bge-m3").symlink_to(target, target_is_directory=True)
    mounts = ModelDirs(m3=tmp_path / "a" / "bge-m3", reranker=tmp_path / "b" / "bge-m3")
    result = subprocess.run(
        serve_command(),
        env=server_env(mounts, {"PORT": str(free_port())}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "would both be served as `BAAI/bge-m3`" in result.stderr
    assert "set EMBEDDING_SERVED_NAME or RERANKER_SERVED_NAME" in result.stderr


def test_the_demo_folders_say_their_weights_are_random(tmp_path: Path) -> None:
    """What ``make demo`` builds and serves: the console and /health say the weights are
    random, and the models are served under their public names."""
    built = subprocess.run(
        [sys.executable, "-m", "tests.fixtures.tiny_models", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    assert f"EMBEDDING_MODEL_NAME={tmp_path / 'bge-m3'}" in built.stdout
    dirs = ModelDirs(m3=tmp_path / "bge-m3", reranker=tmp_path / "bge-reranker-v2-m3")
    assert (dirs.m3 / MARKER).is_file() and (dirs.reranker / MARKER).is_file()
    live = start_server(dirs, {"LOG_LEVEL": "info"})
    try:
        health = httpx.get(f"{live.url}/health").json()
        assert (health["embedding_model"], health["reranker_model"]) == (
            "BAAI/bge-m3",
            "BAAI/bge-reranker-v2-m3",
        )
        assert [w.split(":")[0] for w in health["warnings"]] == [
            "EMBEDDING_MODEL_NAME",
            "RERANKER_MODEL_NAME",
        ]
        assert all("the weights are random" in w for w in health["warnings"])
        assert httpx.post(f"{live.url}/v1/embeddings", json={"input": "hi"}).status_code == 200
    finally:
        stop_server(live)
    console = live.log.read_text()
    assert "EMBEDDING_MODEL_NAME: the weights are random" in console
    assert "reranker model served as `BAAI/bge-reranker-v2-m3`" in console


def test_published_config_fields_are_those_the_hub_folders_carry(built: ModelDirs) -> None:
    dirs = built
    m3 = json.loads((dirs.m3 / "config.json").read_text())
    reranker = json.loads((dirs.reranker / "config.json").read_text())
    assert (m3["architectures"], m3["model_type"]) == (["XLMRobertaModel"], "xlm-roberta")
    assert reranker["architectures"] == ["XLMRobertaForSequenceClassification"]
    assert reranker["_name_or_path"] == "BAAI/bge-m3"
    assert m3["max_position_embeddings"] == reranker["max_position_embeddings"] == 8194
