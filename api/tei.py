"""TEI dialect (Text Embeddings Inference 1.9): ``/embed``, ``/embed_sparse``, ``/embed_all``,
``/predict``, ``/similarity``, ``/tokenize``, ``/decode``, ``/info``, ``POST /``,
``/invocations`` and ``GET /ping`` (SageMaker's), and ``/rerank`` with ``texts``.

Fields, defaults and error bodies (``{"error", "error_type"}``, TEI's statuses)
follow TEI's OpenAPI document. What TEI cannot do for bge-m3, this does:
``/embed_sparse`` answers bge-m3's lexical weights (indices in SPARSE_TOKEN_MAPPING's
space, ascending: token ids by default, as TEI's), ``/embed_all`` its ColBERT vectors.
TEI ignores ``model``, and so do these routes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

import msgspec
import numpy as np
from litestar import Controller, Request, Response, get, post
from litestar.exceptions import HTTPException
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import Body

from api.disconnect import unless_disconnected
from api.docs import VECTOR, answers, sends
from api.errors import TEI_ERROR_RESPONSES, TeiError, problem_of, tei_error
from api.fields import Text, Texts
from engine.errors import EngineError, InvalidInput
from engine.inference import InferenceEngine
from engine.settings import Settings
from engine.sparse_mapping import SparseMapping
from engine.types import Operation, Token

__all__ = ["TeiController", "TeiRerankRequest", "rerank"]

Direction = Literal["Right", "right", "Left", "left"]
T = TypeVar("T")


class _Inputs(msgspec.Struct, kw_only=True):
    inputs: Text | Texts
    truncate: bool | None = None  # None: the server's setting (TRUNCATE), as TEI's auto-truncate
    truncation_direction: Direction = "Right"
    prompt_name: str | None = None

    def texts(self) -> list[str]:
        if self.prompt_name is not None:
            raise InvalidInput(
                "`prompt_name`: bge-m3 has no prompts; send the text as it should be embedded",
                param="prompt_name",
            )
        return [self.inputs] if isinstance(self.inputs, str) else self.inputs

    @property
    def truncate_left(self) -> bool:
        """Left: a text over the token limit keeps its end (when truncation is on)."""
        return self.truncation_direction.lower() == "left"


class EmbedRequest(_Inputs, kw_only=True):
    # false: the pooled vector as the model computes it, before L2 normalisation (TEI's)
    normalize: bool = True
    dimensions: Annotated[int, msgspec.Meta(ge=1)] | None = None


class EmbedSparseRequest(_Inputs, kw_only=True):
    pass


class EmbedAllRequest(_Inputs, kw_only=True):
    pass


class TeiRerankRequest(msgspec.Struct, kw_only=True):
    query: Text
    texts: Texts
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool | None = None  # pairs are always cut to RERANKER_MAX_TOKENS, as FlagReranker
    truncation_direction: Direction = "Right"
    # Ours: TEI ignores it and answers every text; litellm's huggingface/ rerank sends it.
    top_n: int | None = None


class PredictRequest(msgspec.Struct, kw_only=True):
    # A pair, or a batch of pairs: a cross-encoder scores (query, passage) pairs only.
    inputs: Annotated[list[Text | list[Text]], msgspec.Meta(min_length=1)]
    raw_scores: bool = False
    truncate: bool | None = None
    truncation_direction: Direction = "Right"


class TokenizeRequest(msgspec.Struct, kw_only=True):
    inputs: str | list[str]
    add_special_tokens: bool = True
    prompt_name: str | None = None


class DecodeRequest(msgspec.Struct, kw_only=True):
    ids: list[int | list[int]]
    skip_special_tokens: bool = True


class SparseValue(msgspec.Struct):
    index: int
    value: float


class Rank(msgspec.Struct, kw_only=True, omit_defaults=True):
    index: int
    score: float
    text: str | None = None


class Prediction(msgspec.Struct):
    score: float
    label: str


class SimpleToken(msgspec.Struct, kw_only=True):
    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


class Info(msgspec.Struct, kw_only=True):
    model_id: str
    model_sha: str | None
    model_dtype: str
    served_model_name: str
    model_type: dict[str, dict[str, Any]]
    max_concurrent_requests: int
    max_input_length: int
    max_batch_tokens: int
    max_batch_requests: int | None
    max_client_batch_size: int
    auto_truncate: bool
    tokenization_workers: int
    version: str
    sha: str | None = None
    docker_label: str | None = None
    # Ours, after TEI's: the space /embed_sparse's indices are in (null where sparse is
    # not served). TEI clients ignore fields they do not know.
    sparse_mapping: SparseMapping | None = None
    sparse_index_space: int | None = None


_EMBEDDING_TYPE: dict[str, dict[str, Any]] = {"embedding": {"pooling": "cls"}}
_RERANKER_TYPE: dict[str, dict[str, Any]] = {
    "reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}
}
_INFO_ANSWER = {
    "model_id": "BAAI/bge-m3",
    "model_sha": None,
    "model_dtype": "float16",
    "served_model_name": "BAAI/bge-m3",
    "model_type": _EMBEDDING_TYPE,
    "max_concurrent_requests": 256,
    "max_input_length": 8192,
    "max_batch_tokens": 16384,
    "max_batch_requests": None,
    "max_client_batch_size": 2048,
    "auto_truncate": True,
    "tokenization_workers": 1,
    "version": "0.1.0",
    "sparse_mapping": "tokenizer",
    "sparse_index_space": 250002,
}
_RERANKER_INFO_ANSWER = {
    **_INFO_ANSWER,
    "model_id": "BAAI/bge-reranker-v2-m3",
    "served_model_name": "BAAI/bge-reranker-v2-m3",
    "model_type": _RERANKER_TYPE,
    "max_input_length": 512,
    "sparse_mapping": None,
    "sparse_index_space": None,
}
_TEXTS = ["What is BGE M3?", "Paris is in France."]
_EMBED_ASKED = sends({"inputs": _TEXTS, "normalize": True, "truncate": True})
_SPARSE_ASKED = sends({"inputs": _TEXTS[:1]})
_SPARSE_ANSWER = [[{"index": 6, "value": 0.0412}, {"index": 186, "value": 0.0301}]]
_ALL_ASKED = sends({"inputs": _TEXTS[:1]})
_PREDICT_ASKED = sends({"inputs": [["What is BGE M3?", "BGE M3 is an embedding model."]]})
_PREDICT_ANSWER = [[{"score": 0.9804, "label": "LABEL_0"}]]
_TOKENIZE_ASKED = sends({"inputs": "Grüße", "add_special_tokens": True})
_TOKENIZE_ANSWER = [
    [
        {"id": 0, "text": "<s>", "special": True, "start": None, "stop": None},
        {"id": 2009, "text": "Grü", "special": False, "start": 0, "stop": 4},
        {"id": 13946, "text": "ße", "special": False, "start": 4, "stop": 7},
        {"id": 2, "text": "</s>", "special": True, "start": None, "stop": None},
    ]
]
_INVOCATION_EXAMPLES = [
    Example(summary="Embed", value={"inputs": _TEXTS}),
    Example(summary="Rerank", value={"query": _TEXTS[0], "texts": _TEXTS}),
]
_DECODE_ASKED = sends({"ids": [0, 2009, 13946, 2], "skip_special_tokens": True})


class SimilarityInput(msgspec.Struct, kw_only=True):
    source_sentence: Text
    sentences: Texts


class SimilarityParameters(msgspec.Struct, kw_only=True):
    truncate: bool | None = None
    truncation_direction: Direction = "Right"
    prompt_name: str | None = None


class SimilarityRequest(msgspec.Struct, kw_only=True):
    """TEI's (router/src/http/types.rs): each sentence's cosine with the source sentence."""

    inputs: SimilarityInput
    parameters: SimilarityParameters | None = None


_SIMILARITY_ASKED = sends(
    {
        "inputs": {
            "source_sentence": "What is BGE M3?",
            "sentences": ["BGE M3 is an embedding model.", "Paris is in France."],
        }
    }
)
_INVOCATION_SHAPES = (
    "`{query, texts}` (rerank), `{inputs: {source_sentence, sentences}}` (similarity), "
    "`{inputs: [[query, passage], ...]}` (predict) or `{inputs}` (embed)"
)


def _right_only(direction: Direction) -> None:
    # Accepting Left and cutting the end anyway would score another text than was asked.
    if direction.lower() == "left":
        raise InvalidInput(
            "`truncation_direction`: Left is not available for reranking: a pair over "
            "RERANKER_MAX_TOKENS keeps the start of its query and passage, as FlagReranker "
            "cuts it",
            param="truncation_direction",
        )


def _counted(body: Any, tokens: int) -> Response[Any]:
    # TEI reports the tokens it computed in a header (a bge-serve behind another reads it).
    return Response(body, headers={"x-compute-tokens": str(tokens)})


async def rerank(
    request: Request[Any, Any, Any], data: TeiRerankRequest, engine: InferenceEngine
) -> Response[Any]:
    """TEI's rerank: every text, best first; ``top_n`` (ours) keeps the best ones."""
    _right_only(data.truncation_direction)
    ranking = await unless_disconnected(
        request, engine.rerank(data.query, data.texts, top_n=data.top_n)
    )
    body = [
        Rank(
            index=r.index,
            score=r.logit if data.raw_scores else r.score,
            text=data.texts[r.index] if data.return_text else None,
        )
        for r in ranking.results
    ]
    return _counted(body, ranking.prompt_tokens)


class TeiController(Controller):
    tags = ("TEI",)
    # Each class the app handles too: Litestar picks the handler of the closest class,
    # whichever layer has it.
    exception_handlers = {  # noqa: RUF012
        EngineError: tei_error,
        HTTPException: tei_error,
        UnicodeDecodeError: tei_error,
        RecursionError: tei_error,
        Exception: tei_error,
    }

    @post(
        ["/embed", "/"],
        status_code=200,
        responses=answers(list[list[float]], [VECTOR, VECTOR], TEI_ERROR_RESPONSES),
        raises=[],
        summary="Dense embeddings (TEI-compatible; POST / is the same)",
    )
    async def embed(
        self,
        request: Request[Any, Any, Any],
        data: Annotated[EmbedRequest, _EMBED_ASKED],
        engine: InferenceEngine,
    ) -> Response[list[list[float]]]:
        dense, tokens = await unless_disconnected(
            request,
            engine.embed_dense(
                data.texts(),
                dimensions=data.dimensions,
                truncate=data.truncate,
                field="inputs",
                normalize=data.normalize,
                truncate_left=data.truncate_left,
            ),
        )
        rows: list[list[float]] = dense.tolist()
        return _counted(rows, tokens)

    @post(
        "/embed_sparse",
        status_code=200,
        responses=answers(list[list[SparseValue]], _SPARSE_ANSWER, TEI_ERROR_RESPONSES),
        raises=[],
        summary="bge-m3 lexical weights in SPARSE_TOKEN_MAPPING's space: index = token id "
        "(the default, as TEI's), or hashed with SPARSE_TOKEN_MAPPING=hash (TEI-compatible)",
    )
    async def embed_sparse(
        self,
        request: Request[Any, Any, Any],
        data: Annotated[EmbedSparseRequest, _SPARSE_ASKED],
        engine: InferenceEngine,
    ) -> Response[list[list[SparseValue]]]:
        """TEI's body has no mapping field, so the indices are in the configured space:
        token ids under the default, hashed indices under SPARSE_TOKEN_MAPPING=hash, so
        that a collection built from any route of this service is queryable from this one.
        /info's ``sparse_mapping`` and ``sparse_index_space`` say which."""
        vectors, tokens = await unless_disconnected(
            request,
            engine.embed_sparse(
                data.texts(),
                truncate=data.truncate,
                field="inputs",
                truncate_left=data.truncate_left,
            ),
        )
        body = [
            [
                SparseValue(i, v)
                for i, v in zip(vector.indices.tolist(), vector.values.tolist(), strict=True)
            ]
            for vector in vectors
        ]
        return _counted(body, tokens)

    @post(
        "/embed_all",
        status_code=200,
        responses=answers(list[list[list[float]]], [[VECTOR, VECTOR]], TEI_ERROR_RESPONSES),
        raises=[],
        summary="bge-m3 ColBERT vectors, one per token after CLS (TEI-compatible)",
    )
    async def embed_all(
        self,
        request: Request[Any, Any, Any],
        data: Annotated[EmbedAllRequest, _ALL_ASKED],
        engine: InferenceEngine,
    ) -> Response[list[list[list[float]]]]:
        matrices, tokens = await unless_disconnected(
            request,
            engine.embed_colbert(
                data.texts(),
                truncate=data.truncate,
                field="inputs",
                truncate_left=data.truncate_left,
            ),
        )
        return _counted([matrix.tolist() for matrix in matrices], tokens)

    @post(
        ["/predict", "/reranker/predict"],
        status_code=200,
        responses=answers(list[list[Prediction]], _PREDICT_ANSWER, TEI_ERROR_RESPONSES),
        raises=[],
        summary="Cross-encoder scores of (query, passage) pairs (TEI-compatible)",
    )
    async def predict(
        self,
        request: Request[Any, Any, Any],
        data: Annotated[PredictRequest, _PREDICT_ASKED],
        engine: InferenceEngine,
    ) -> Response[list[Prediction] | list[list[Prediction]]]:
        _right_only(data.truncation_direction)
        single = all(isinstance(item, str) for item in data.inputs)
        rows = [data.inputs] if single else data.inputs
        pairs: list[tuple[str, str]] = []
        for position, row in enumerate(rows):
            if (
                not isinstance(row, list)
                or len(row) != 2
                or not all(isinstance(t, str) for t in row)
            ):
                where = "inputs" if single else f"inputs[{position}]"
                raise InvalidInput(
                    f"`{where}` must be a [query, passage] pair: the reranker scores pairs",
                    param=where,
                )
            query, passage = row
            assert isinstance(query, str) and isinstance(passage, str)
            pairs.append((query, passage))
        scores = await unless_disconnected(request, engine.score_pairs(pairs, field="inputs"))
        values = scores.logits if data.raw_scores else scores.probabilities
        predictions = [[Prediction(float(v), "LABEL_0")] for v in values]
        body: list[Prediction] | list[list[Prediction]] = predictions[0] if single else predictions
        return _counted(body, scores.token_count)

    @post(
        "/tokenize",
        status_code=200,
        responses=answers(list[list[SimpleToken]], _TOKENIZE_ANSWER, TEI_ERROR_RESPONSES),
        raises=[],
        summary="Tokens with their text and byte offsets (TEI-compatible)",
    )
    async def tokenize(
        self, data: Annotated[TokenizeRequest, _TOKENIZE_ASKED], engine: InferenceEngine
    ) -> list[list[SimpleToken]]:
        if data.prompt_name is not None:
            raise InvalidInput("`prompt_name`: bge-m3 has no prompts", param="prompt_name")
        texts = [data.inputs] if isinstance(data.inputs, str) else data.inputs
        rows = await engine.tokens(texts, add_special_tokens=data.add_special_tokens)
        return [[_simple(token) for token in row] for row in rows]

    @post(
        "/decode",
        status_code=200,
        responses=answers(list[str], ["Grüße"], TEI_ERROR_RESPONSES),
        raises=[],
        summary="Text of token ids (TEI-compatible)",
    )
    async def decode(
        self, data: Annotated[DecodeRequest, _DECODE_ASKED], engine: InferenceEngine
    ) -> list[str]:
        ids = data.ids
        if all(isinstance(item, int) for item in ids):
            rows: list[list[int]] = [[item for item in ids if isinstance(item, int)]]
        elif all(isinstance(item, list) for item in ids):
            rows = [item for item in ids if isinstance(item, list)]
        else:
            raise InvalidInput(
                "`ids` must be a list of token ids or a list of such lists, not a mix",
                param="ids",
            )
        for row_index, row in enumerate(rows):
            for position, token_id in enumerate(row):
                if token_id < 0:
                    where = f"ids[{row_index}][{position}]"
                    raise InvalidInput(f"`{where}` is negative", param=where)
        return list(await engine.decode(rows, skip_special_tokens=data.skip_special_tokens))

    @get(
        "/info",
        summary="The model, the limits clients must respect (TEI-compatible) and the "
        "sparse index space",
        responses=answers(Info, _INFO_ANSWER, {}),
    )
    async def info(self, engine: InferenceEngine, settings: Settings, version: str) -> Info:
        operation = next(
            (op for op in (Operation.EMBED, Operation.LEXICAL_COLBERT) if op in engine.operations),
            Operation.RERANK,
        )
        return _info(engine, settings, version, operation)

    @get(
        "/reranker/info",
        summary="/info as a TEI reranker container answers it: for TEI clients that check "
        "the model type before they rerank (base URL …/reranker)",
        responses=answers(Info, _RERANKER_INFO_ANSWER, {}),
    )
    async def reranker_info(
        self, engine: InferenceEngine, settings: Settings, version: str
    ) -> Info:
        return _info(engine, settings, version, Operation.RERANK)

    @post(
        "/similarity",
        status_code=200,
        responses=answers(list[float], [0.7614, 0.3102], TEI_ERROR_RESPONSES),
        raises=[],
        summary="Cosine similarity of each sentence with the source sentence (TEI-compatible)",
    )
    async def similarity(
        self,
        request: Request[Any, Any, Any],
        data: Annotated[SimilarityRequest, _SIMILARITY_ASKED],
        engine: InferenceEngine,
    ) -> Response[list[float]]:
        parameters = data.parameters or SimilarityParameters()
        if parameters.prompt_name is not None:
            raise InvalidInput(
                "`parameters.prompt_name`: bge-m3 has no prompts", param="parameters.prompt_name"
            )
        # TEI embeds the source with the sentences, one batch (server.rs, similarity).
        dense, tokens = await unless_disconnected(
            request,
            engine.embed_dense(
                [data.inputs.source_sentence, *data.inputs.sentences],
                truncate=parameters.truncate,
                field="inputs",
                truncate_left=parameters.truncation_direction.lower() == "left",
            ),
        )
        rows = dense.astype(np.float64)
        norms = np.linalg.norm(rows, axis=1)
        cosines = rows[1:] @ rows[0] / np.maximum(norms[1:] * norms[0], 1e-12)
        return _counted([float(np.float32(c)) for c in cosines], tokens)

    @post(
        "/invocations",
        status_code=200,
        # Whatever the route the body speaks answers: vectors, ranks, similarities, scores.
        responses=answers(
            list[list[float]]
            | list[Rank]
            | list[float]
            | list[Prediction]
            | list[list[Prediction]],
            [VECTOR],
            TEI_ERROR_RESPONSES,
        ),
        raises=[],
        summary="AWS SageMaker's inference route (TEI-compatible): rerank, similarity, "
        "predict or embed, by the body's shape",
        description="TEI mounts this on its one model's route; this service serves several "
        f"models, so it reads the body, as TEI's /vertex does: {_INVOCATION_SHAPES}.",
    )
    async def invocations(
        self,
        request: Request[Any, Any, Any],
        data: dict[str, Any] = Body(  # noqa: B008 - Litestar reads the body's docs from here
            title="Invocation",
            description=f"One of {_INVOCATION_SHAPES}",
            examples=_INVOCATION_EXAMPLES,
        ),
        *,
        engine: InferenceEngine,
    ) -> Response[Any]:
        # TEI's /vertex tries rerank first: the one payload that can be matched safely.
        if "query" in data and "texts" in data:
            return await rerank(request, _decoded(data, TeiRerankRequest), engine)
        inputs = data.get("inputs")
        if isinstance(inputs, dict):
            handler: Any = TeiController.similarity.fn
            return await handler(self, request, _decoded(data, SimilarityRequest), engine)  # type: ignore[no-any-return]
        pairs = isinstance(inputs, list) and any(isinstance(item, list) for item in inputs)
        if pairs or (Operation.EMBED not in engine.operations and "inputs" in data):
            handler = TeiController.predict.fn
            return await handler(self, request, _decoded(data, PredictRequest), engine)  # type: ignore[no-any-return]
        if "inputs" not in data:
            raise InvalidInput(
                f"the body is none of the shapes this route takes: {_INVOCATION_SHAPES}"
            )
        handler = TeiController.embed.fn
        return await handler(self, request, _decoded(data, EmbedRequest), engine)  # type: ignore[no-any-return]

    @get(
        "/ping",
        summary="AWS SageMaker's health check (TEI-compatible): 200 with no body when every "
        "model is loaded and healthy, else 503",
        cache=False,
        media_type="text/plain",
        responses={503: ResponseSpec(TeiError, description="Loading or degraded")},
    )
    async def ping(self, engine: InferenceEngine) -> Response[Any]:
        # server.rs, health: an empty 200, or 503 {"error": "unhealthy", ...}.
        if engine.health().status == "ok":
            return Response(b"", status_code=200)
        unhealthy = TeiError("unhealthy", "Unhealthy")
        return Response(unhealthy, status_code=503, media_type="application/json")


def _decoded(data: dict[str, Any], kind: type[T]) -> T:
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        problem = problem_of(exc)
        raise InvalidInput(problem.message, param=problem.param) from exc


def _info(engine: InferenceEngine, settings: Settings, version: str, operation: Operation) -> Info:
    model = engine.model_info(operation)
    name = engine.model_name(operation)
    sparse = operation is not Operation.RERANK and Operation.LEXICAL_COLBERT in engine.operations
    return Info(
        model_id=name,
        model_sha=None,
        # A remote's dtype is its own: TEI's field wants a value, float32 is the safe one.
        model_dtype=model.dtype or "float32",
        served_model_name=name,
        model_type=_RERANKER_TYPE
        if operation is Operation.RERANK
        else {"embedding": {"pooling": model.pooling or "cls"}},
        max_concurrent_requests=settings.max_queued_requests,
        max_input_length=model.max_tokens,
        max_batch_tokens=settings.max_batch_tokens,
        max_batch_requests=None,
        max_client_batch_size=settings.max_batch_size,
        auto_truncate=settings.truncate,
        tokenization_workers=1,
        version=version,
        sparse_mapping=settings.sparse_token_mapping if sparse else None,
        sparse_index_space=engine.sparse_index_space() if sparse else None,
    )


def _simple(token: Token) -> SimpleToken:
    return SimpleToken(
        id=token.id, text=token.text, special=token.special, start=token.start, stop=token.stop
    )
