"""TEI dialect (Text Embeddings Inference 1.9): ``/embed``, ``/embed_sparse``, ``/embed_all``,
``/predict``, ``/tokenize``, ``/decode``, ``/info``, ``POST /``, and ``/rerank`` with ``texts``.

Fields, defaults and error bodies (``{"error", "error_type"}``, TEI's statuses)
follow TEI's OpenAPI document. What TEI cannot do for bge-m3, this does:
``/embed_sparse`` answers bge-m3's lexical weights (token-id indices, ascending),
``/embed_all`` its ColBERT vectors. TEI ignores ``model``, and so do these routes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.exceptions import HTTPException

from api.disconnect import unless_disconnected
from api.errors import TEI_ERROR_RESPONSES, tei_error
from engine.errors import EngineError, InvalidInput
from engine.inference import InferenceEngine, sigmoid
from engine.settings import Settings
from engine.types import Operation, Token

__all__ = ["TeiController", "TeiRerankRequest", "rerank"]

Direction = Literal["Right", "right", "Left", "left"]


class _Inputs(msgspec.Struct, kw_only=True):
    inputs: str | list[str]
    truncate: bool | None = None  # None: the server's setting (TRUNCATE), as TEI's auto-truncate
    truncation_direction: Direction = "Right"
    prompt_name: str | None = None

    def texts(self) -> list[str]:
        if self.prompt_name is not None:
            raise InvalidInput(
                "`prompt_name`: bge-m3 has no prompts; send the text as it should be embedded",
                param="prompt_name",
            )
        if self.truncation_direction.lower() != "right":
            raise InvalidInput(
                "`truncation_direction`: only Right is supported (the end of a long text is cut)",
                param="truncation_direction",
            )
        return [self.inputs] if isinstance(self.inputs, str) else self.inputs


class EmbedRequest(_Inputs, kw_only=True):
    normalize: bool = True
    dimensions: Annotated[int, msgspec.Meta(ge=1)] | None = None

    def checked(self) -> list[str]:
        if not self.normalize:
            raise InvalidInput(
                "`normalize`: false is not supported; bge-m3's dense vectors are served "
                "L2-normalised (compare them by dot product or cosine)",
                param="normalize",
            )
        return self.texts()


class EmbedSparseRequest(_Inputs, kw_only=True):
    pass


class EmbedAllRequest(_Inputs, kw_only=True):
    pass


class TeiRerankRequest(msgspec.Struct, kw_only=True):
    query: str
    texts: list[str]
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool | None = None  # pairs are always cut to RERANKER_MAX_TOKENS, as FlagReranker
    truncation_direction: Direction = "Right"


class PredictRequest(msgspec.Struct, kw_only=True):
    # A pair, or a batch of pairs: a cross-encoder scores (query, passage) pairs only.
    inputs: list[str | list[str]]
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


def _counted(body: Any, tokens: int) -> Response[Any]:
    # TEI reports the tokens it computed in a header (a bge-serve behind another reads it).
    return Response(body, headers={"x-compute-tokens": str(tokens)})


async def rerank(
    request: Request[Any, Any, Any], data: TeiRerankRequest, engine: InferenceEngine
) -> Response[Any]:
    """TEI's rerank: every text, best first (TEI has no top_n)."""
    ranking = await unless_disconnected(request, engine.rerank(data.query, data.texts))
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
    # HTTPException too: Litestar picks the handler of the closest class in any layer.
    exception_handlers = {  # noqa: RUF012
        EngineError: tei_error,
        HTTPException: tei_error,
        Exception: tei_error,
    }

    @post(
        ["/embed", "/"],
        status_code=200,
        responses=TEI_ERROR_RESPONSES,
        raises=[],
        summary="Dense embeddings (TEI-compatible; POST / is the same)",
    )
    async def embed(
        self, request: Request[Any, Any, Any], data: EmbedRequest, engine: InferenceEngine
    ) -> Response[list[list[float]]]:
        dense, tokens = await unless_disconnected(
            request,
            engine.embed_dense(
                data.checked(), dimensions=data.dimensions, truncate=data.truncate, field="inputs"
            ),
        )
        rows: list[list[float]] = dense.tolist()
        return _counted(rows, tokens)

    @post(
        "/embed_sparse",
        status_code=200,
        responses=TEI_ERROR_RESPONSES,
        raises=[],
        summary="bge-m3 lexical weights, index = token id (TEI-compatible)",
    )
    async def embed_sparse(
        self, request: Request[Any, Any, Any], data: EmbedSparseRequest, engine: InferenceEngine
    ) -> Response[list[list[SparseValue]]]:
        vectors, tokens = await unless_disconnected(
            request,
            engine.embed_sparse(
                data.texts(), mapping="tokenizer", truncate=data.truncate, field="inputs"
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
        responses=TEI_ERROR_RESPONSES,
        raises=[],
        summary="bge-m3 ColBERT vectors, one per token after CLS (TEI-compatible)",
    )
    async def embed_all(
        self, request: Request[Any, Any, Any], data: EmbedAllRequest, engine: InferenceEngine
    ) -> Response[list[list[list[float]]]]:
        matrices, tokens = await unless_disconnected(
            request, engine.embed_colbert(data.texts(), truncate=data.truncate, field="inputs")
        )
        return _counted([matrix.tolist() for matrix in matrices], tokens)

    @post(
        "/predict",
        status_code=200,
        responses=TEI_ERROR_RESPONSES,
        raises=[],
        summary="Cross-encoder scores of (query, passage) pairs (TEI-compatible)",
    )
    async def predict(
        self, request: Request[Any, Any, Any], data: PredictRequest, engine: InferenceEngine
    ) -> Response[list[Prediction] | list[list[Prediction]]]:
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
        values = scores.logits if data.raw_scores else sigmoid(scores.logits)
        predictions = [[Prediction(float(v), "LABEL_0")] for v in values]
        body: list[Prediction] | list[list[Prediction]] = predictions[0] if single else predictions
        return _counted(body, scores.token_count)

    @post(
        "/tokenize",
        status_code=200,
        responses=TEI_ERROR_RESPONSES,
        raises=[],
        summary="Tokens with their text and byte offsets (TEI-compatible)",
    )
    async def tokenize(
        self, data: TokenizeRequest, engine: InferenceEngine
    ) -> list[list[SimpleToken]]:
        if data.prompt_name is not None:
            raise InvalidInput("`prompt_name`: bge-m3 has no prompts", param="prompt_name")
        texts = [data.inputs] if isinstance(data.inputs, str) else data.inputs
        rows = await engine.tokens(texts, add_special_tokens=data.add_special_tokens)
        return [[_simple(token) for token in row] for row in rows]

    @post(
        "/decode",
        status_code=200,
        responses=TEI_ERROR_RESPONSES,
        raises=[],
        summary="Text of token ids (TEI-compatible)",
    )
    async def decode(self, data: DecodeRequest, engine: InferenceEngine) -> list[str]:
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

    @get("/info", summary="The model and the limits clients must respect (TEI-compatible)")
    async def info(self, engine: InferenceEngine, settings: Settings, version: str) -> Info:
        operation = next(
            (op for op in (Operation.EMBED, Operation.SPARSE) if op in engine.operations),
            Operation.RERANK,
        )
        model = engine.model_info(operation)
        name = engine.model_name(operation)
        health = engine.health()
        on_gpu = any(b.device.startswith("cuda") for b in health.backends.values())
        if operation is Operation.RERANK:
            model_type: dict[str, dict[str, Any]] = {
                "reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}
            }
        else:
            model_type = {"embedding": {"pooling": "cls"}}
        return Info(
            model_id=name,
            model_sha=None,
            model_dtype="float16" if on_gpu and settings.use_fp16 else "float32",
            served_model_name=name,
            model_type=model_type,
            max_concurrent_requests=settings.max_queued_requests,
            max_input_length=model.max_tokens,
            max_batch_tokens=settings.max_batch_tokens,
            max_batch_requests=None,
            max_client_batch_size=settings.max_batch_size,
            auto_truncate=settings.truncate,
            tokenization_workers=1,
            version=version,
        )


def _simple(token: Token) -> SimpleToken:
    return SimpleToken(
        id=token.id, text=token.text, special=token.special, start=token.start, stop=token.stop
    )
