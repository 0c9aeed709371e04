"""Every dialect's routes, on a live server: each TEI and Infinity request and answer fits
the published contract, and each answer equals the native route's for the same input."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from tests.conftest import ModelDirs
from tests.contract import post_checked, validate, validate_response
from tests.texts import DOCUMENTS, LONG_TEXT, QUERY, TEXTS

INPUTS = TEXTS[:5]  # includes non-ASCII text and one longer than the model takes


@pytest.fixture(scope="module")
def tokenizer(models: ModelDirs) -> PreTrainedTokenizerBase:
    loaded: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(models.m3)
    return loaded


def tei(client: httpx.Client, path: str, body: dict[str, Any], status: int = 200) -> Any:
    return post_checked(client, "tei", path, body, status)


def infinity(client: httpx.Client, path: str, body: dict[str, Any]) -> Any:
    return post_checked(client, "infinity", path, body)


def native_dense(client: httpx.Client, texts: list[str], **extra: Any) -> np.ndarray[Any, Any]:
    body = client.post("/v1/embeddings", json={"input": texts, **extra}).json()
    return np.array([row["embedding"] for row in body["data"]])


def native_logits(client: httpx.Client, query: str, documents: list[str]) -> np.ndarray[Any, Any]:
    body = {"query": query, "documents": documents, "raw_scores": True}
    results = client.post("/v1/rerank", json=body).json()["results"]
    logits = np.empty(len(documents))
    for result in results:
        logits[result["index"]] = result["relevance_score"]
    return logits


def sigmoid(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return 1 / (1 + np.exp(-x))


# -- TEI ------------------------------------------------------------------------------


def test_tei_embed_equals_openai_and_reports_tokens(client: httpx.Client) -> None:
    response = client.post("/embed", json={"inputs": INPUTS})
    validate_response("tei", "POST", "/embed", 200, response.json())
    np.testing.assert_allclose(response.json(), native_dense(client, INPUTS), atol=1e-5)
    usage = client.post("/v1/embeddings", json={"input": INPUTS}).json()["usage"]
    assert response.headers["x-compute-tokens"] == str(usage["prompt_tokens"])


def test_tei_default_route_and_single_input_and_dimensions(client: httpx.Client) -> None:
    # TEI serves POST / as its model's route but leaves it out of its OpenAPI document.
    single = client.post("/", json={"inputs": "hello world"}).json()
    validate_response("tei", "POST", "/embed", 200, single)
    np.testing.assert_allclose(single, native_dense(client, ["hello world"]), atol=1e-5)
    cut = tei(client, "/embed", {"inputs": ["hello world"], "dimensions": 8, "normalize": True})
    expected = native_dense(client, ["hello world"], dimensions=8)
    np.testing.assert_allclose(cut, expected, atol=1e-5)


def test_tei_truncate_false_refuses_a_long_text_as_tei_does(client: httpx.Client) -> None:
    answer = tei(client, "/embed", {"inputs": [LONG_TEXT], "truncate": False}, status=413)
    assert answer["error_type"] == "Validation" and "512" in answer["error"]
    tei(client, "/embed", {"inputs": [LONG_TEXT], "truncate": True})


def test_tei_embed_sparse_is_bge_m3_lexical_weights_by_token_id(client: httpx.Client) -> None:
    answer = tei(client, "/embed_sparse", {"inputs": INPUTS})
    native = client.post(
        "/v1/sparse-embeddings", json={"input": INPUTS, "mapping": "tokenizer"}
    ).json()["data"]
    for row, expected in zip(answer, native, strict=True):
        indices = [value["index"] for value in row]
        assert indices == sorted(indices) == expected["sparse"]["indices"]
        np.testing.assert_allclose(
            [value["value"] for value in row], expected["sparse"]["values"], rtol=1e-5
        )


def test_tei_embed_all_is_colbert(client: httpx.Client) -> None:
    answer = tei(client, "/embed_all", {"inputs": INPUTS[:3]})
    native = client.post(
        "/v1/hybrid-embeddings", json={"input": INPUTS[:3], "return_colbert": True}
    ).json()["data"]
    for matrix, expected in zip(answer, native, strict=True):
        np.testing.assert_allclose(matrix, expected["colbert"], atol=1e-5)


@pytest.mark.parametrize("raw_scores", [False, True])
def test_tei_rerank_is_a_sorted_array(client: httpx.Client, raw_scores: bool) -> None:
    body = {"query": QUERY, "texts": DOCUMENTS, "raw_scores": raw_scores, "return_text": True}
    answer = tei(client, "/rerank", body)
    logits = native_logits(client, QUERY, DOCUMENTS)
    expected = logits if raw_scores else sigmoid(logits)
    assert [r["index"] for r in answer] == np.argsort(-logits, kind="stable").tolist()
    for rank in answer:
        assert rank["score"] == pytest.approx(expected[rank["index"]], abs=1e-5)
        assert rank["text"] == DOCUMENTS[rank["index"]]


def test_tei_predict_scores_pairs(client: httpx.Client) -> None:
    one = tei(client, "/predict", {"inputs": [QUERY, DOCUMENTS[0]]})
    batch = tei(
        client,
        "/predict",
        {"inputs": [[QUERY, DOCUMENTS[0]], ["berlin", DOCUMENTS[1]]], "raw_scores": True},
    )
    assert one[0]["score"] == pytest.approx(
        sigmoid(native_logits(client, QUERY, DOCUMENTS[:1]))[0], abs=1e-5
    )
    assert batch[1][0]["score"] == pytest.approx(
        native_logits(client, "berlin", DOCUMENTS[1:2])[0], abs=1e-4
    )


def test_tei_tokenize_gives_ids_and_byte_offsets(
    client: httpx.Client, tokenizer: PreTrainedTokenizerBase
) -> None:
    texts = [TEXTS[2], "hello world"]  # multi-byte characters: offsets are in bytes, as TEI's
    answer = tei(client, "/tokenize", {"inputs": texts})
    for text, tokens in zip(texts, answer, strict=True):
        assert [t["id"] for t in tokens] == tokenizer(text)["input_ids"]
        assert tokens[0]["special"] and tokens[-1]["special"]
        for token in tokens[1:-1]:
            assert text.encode()[token["start"] : token["stop"]].decode() == token["text"]
    bare = tei(client, "/tokenize", {"inputs": "hello", "add_special_tokens": False})
    assert not any(t["special"] for t in bare[0])


def test_tei_decode_is_the_tokenizers(
    client: httpx.Client, tokenizer: PreTrainedTokenizerBase
) -> None:
    ids = [tokenizer(text)["input_ids"] for text in ("hello world", TEXTS[2])]
    assert tei(client, "/decode", {"ids": ids}) == tokenizer.batch_decode(
        ids, skip_special_tokens=True
    )
    with_specials = tei(client, "/decode", {"ids": ids[0], "skip_special_tokens": False})
    assert with_specials == [tokenizer.decode(ids[0])]


def test_tei_info(client: httpx.Client) -> None:
    info = client.get("/info").json()
    validate("tei", "Info", info)
    assert info["model_id"] == info["served_model_name"] == "BAAI/bge-m3"
    assert info["model_type"] == {"embedding": {"pooling": "cls"}}
    assert info["max_input_length"] == 512


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/embed", {"inputs": []}, 422),
        ("/embed", {"inputs": ["ok", " "]}, 422),
        ("/embed", {"texts": ["the wrong field"]}, 422),
        ("/embed", {"inputs": ["a"], "truncation_direction": "Up"}, 422),
        ("/embed_sparse", {"inputs": "a", "prompt_name": "query"}, 422),
        ("/rerank", {"query": QUERY, "texts": []}, 422),
        ("/decode", {"ids": [1, [2]]}, 422),
        ("/predict", {"inputs": [["only one"]]}, 422),
    ],
)
def test_tei_errors_are_tei_shaped(
    client: httpx.Client, path: str, body: dict[str, Any], status: int
) -> None:
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    validate("tei", "ErrorResponse", response.json())


def test_tei_malformed_json_and_oversized_batches(client: httpx.Client) -> None:
    response = client.post(
        "/embed", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    validate("tei", "ErrorResponse", response.json())
    too_many = client.post("/embed", json={"inputs": ["a"] * 65})  # MAX_BATCH_SIZE=64 in tests
    assert too_many.status_code == 413
    validate("tei", "ErrorResponse", too_many.json())


# -- Infinity -------------------------------------------------------------------------


def test_infinity_embeddings_equal_openai(client: httpx.Client) -> None:
    body = {"input": INPUTS, "model": "default/not-specified", "dimensions": 0}
    answer = infinity(client, "/embeddings", {**body, "modality": "text"})
    got = np.array([row["embedding"] for row in answer["data"]])
    np.testing.assert_allclose(got, native_dense(client, INPUTS), atol=1e-5)
    assert answer["model"] == "BAAI/bge-m3"


def test_infinity_rerank_on_the_bare_route(client: httpx.Client) -> None:
    body = {"query": QUERY, "documents": DOCUMENTS, "return_documents": True, "top_n": 3}
    answer = infinity(client, "/rerank", body)
    logits = native_logits(client, QUERY, DOCUMENTS)
    assert answer["object"] == "rerank" and answer["model"] == "BAAI/bge-reranker-v2-m3"
    assert [r["index"] for r in answer["results"]] == np.argsort(-logits)[:3].tolist()
    for result in answer["results"]:
        assert result["document"] == DOCUMENTS[result["index"]]  # a plain string
        assert result["relevance_score"] == pytest.approx(sigmoid(logits[result["index"]]))


def test_infinity_models(client: httpx.Client) -> None:
    answer = client.get("/models").json()
    validate_response("infinity", "GET", "/models", 200, answer)
    capabilities = {m["id"]: m["capabilities"] for m in answer["data"]}
    assert capabilities == {"BAAI/bge-m3": ["embed"], "BAAI/bge-reranker-v2-m3": ["rerank"]}


# -- Cohere v2 ------------------------------------------------------------------------


def test_cohere_v2_shape_and_max_tokens_per_doc(
    client: httpx.Client, tokenizer: PreTrainedTokenizerBase
) -> None:
    body = {"model": "bge-reranker-v2-m3", "query": QUERY, "documents": DOCUMENTS, "top_n": 2}
    answer = client.post("/v2/rerank", json=body).json()
    assert set(answer) == {"id", "results", "meta"}
    logits = native_logits(client, QUERY, DOCUMENTS)
    assert [r["index"] for r in answer["results"]] == np.argsort(-logits)[:2].tolist()
    assert answer["meta"]["billed_units"] == {"search_units": 1}

    # Each document cut to its first 3 tokens scores as that prefix does.
    cut = client.post("/v2/rerank", json={**body, "top_n": None, "max_tokens_per_doc": 3}).json()
    prefixes = []
    for document in DOCUMENTS:
        encoded = tokenizer(document, add_special_tokens=False, return_offsets_mapping=True)
        offsets = encoded["offset_mapping"]
        prefixes.append(document[: offsets[2][1]] if len(offsets) > 3 else document)
    expected = sigmoid(native_logits(client, QUERY, prefixes))
    for result in cut["results"]:
        assert result["relevance_score"] == pytest.approx(expected[result["index"]], abs=1e-5)


# -- BAAI reranker service ------------------------------------------------------------


def test_reranker_service_pair(client: httpx.Client) -> None:
    logit = native_logits(client, QUERY, DOCUMENTS[:1])[0]
    raw = client.post("/rerank", json={"query": QUERY, "passage": DOCUMENTS[0]}).json()
    assert raw["score"] == pytest.approx(logit, abs=1e-4)
    assert (raw["normalized"], raw["query_length"], raw["passage_length"]) == (
        False,
        len(QUERY),
        len(DOCUMENTS[0]),
    )
    normalized = client.post(
        "/rerank", json={"query": QUERY, "passage": DOCUMENTS[0], "normalize": True}
    ).json()
    assert normalized["score"] == pytest.approx(sigmoid(logit), abs=1e-5)


def test_reranker_service_batch_in_input_order_and_shared_passes(client: httpx.Client) -> None:
    queries = [QUERY, "berlin music", QUERY, "berlin music", QUERY, QUERY]
    pairs = [{"query": q, "passage": d} for q, d in zip(queries, DOCUMENTS, strict=False)]

    def passes() -> int:
        stats = client.get("/health").json()["backends"]["flag"]["stats"]
        return int(stats["rerank.forward_passes"])

    before = passes()
    answer = client.post("/rerank/batch", json={"pairs": pairs}).json()
    # Two queries: at most two passes for six pairs (a loop over pairs would run six).
    assert passes() - before <= 2
    assert answer["pairs_count"] == len(pairs) and answer["normalized"] is False
    for pair, score in zip(pairs, answer["scores"], strict=True):
        expected = native_logits(client, pair["query"], [pair["passage"]])[0]
        assert score == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"pairs": [{"query": "q", "passage": " "}]}, "pairs[0].passage"),
        ({"pairs": [{"query": "", "passage": "p"}]}, "pairs[0].query"),
        ({"pairs": []}, "pairs"),
    ],
)
def test_reranker_service_batch_names_the_bad_pair(
    client: httpx.Client, body: dict[str, Any], param: str
) -> None:
    response = client.post("/rerank/batch", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["param"] == param


def test_bare_rerank_names_the_shapes_it_takes(client: httpx.Client) -> None:
    response = client.post("/rerank", json={"query": QUERY, "docs": ["a"]})
    assert response.status_code == 422
    message = response.json()["error"]["message"]
    assert "passage" in message and "texts" in message and "documents" in message
    wrong_type = client.post("/rerank", json={"query": QUERY, "documents": "not a list"})
    assert wrong_type.status_code == 422
    assert wrong_type.json()["error"]["param"] == "documents"
