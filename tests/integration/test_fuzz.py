"""Fuzzing the live server: requests generated from its own OpenAPI document
(schemathesis: schema-valid and schema-violating, a fixed seed, a bounded number per
route), and raw bytes thrown at every POST route.

Whatever arrives: no 5xx, every answer as the document describes it (status, media
type, body schema), every 4xx in its dialect's error body.
"""

from __future__ import annotations

import gzip
import json
import random
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import Server
from tests.routes import ENVELOPE_POST_ROUTES, TEI_POST_ROUTES

# ≤ 100 requests per route in all: this many of each generation mode.
EXAMPLES_PER_MODE = 25


def error_body_in_dialect(ctx: Any, response: Any, case: Any) -> bool:
    """A 4xx carries the OpenAI envelope, or TEI's body on TEI's routes."""
    if not 400 <= response.status_code < 500:
        return True
    body = json.loads(response.content)
    tags = case.operation.definition.raw.get("tags") or []
    # The bare /rerank speaks TEI only to a body in TEI's shape.
    tei = tags == ["TEI"] or ("TEI" in tags and isinstance(body.get("error"), str))
    if tei:
        assert set(body) == {"error", "error_type"}, body
        assert isinstance(body["error"], str) and body["error"], body
        return True
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    return True


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    error_body_in_dialect,
]


def test_generated_requests_on_every_route(server: Server) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/docs/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 24
    failures: list[str] = []
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                if mode is GenerationMode.NEGATIVE and not _can_be_wrong(operation):
                    continue  # nothing to violate: no body, no parameters
                try:
                    _fuzz(operation, mode, http)
                except Exception as exc:  # noqa: BLE001 - every route's failure is reported
                    failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)


def _can_be_wrong(operation: Any) -> bool:
    return bool(operation.body) or bool(list(operation.iter_parameters()))


def _fuzz(operation: Any, mode: GenerationMode, http: httpx.Client) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_MODE,
        derandomize=True,  # the same requests on every run
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        response = case.call(session=None, base_url=str(http.base_url).rstrip("/"), timeout=60)
        case.validate_response(response, checks=CHECKS)

    run()


def _byte_bodies() -> list[bytes]:
    rng = random.Random(20261122)
    valid = json.dumps({"input": ["a text", "another"], "query": "q", "documents": ["d"]})
    bodies = [bytes(rng.randrange(256) for _ in range(rng.randint(1, 300))) for _ in range(12)]
    bodies += [valid[: rng.randint(1, len(valid) - 1)].encode() for _ in range(8)]
    bodies += [
        b"[" * 100_000,
        b'{"input": ' + b"[" * 5_000 + b"]" * 5_000 + b"}",
        b'{"input": ' + b'{"a": ' * 3_000 + b"1" + b"}" * 3_000 + b"}",
        b"\x00" * 1000,
        b'{"input": "\\ud800"}',
        b'{"input": 1e999999}',
        b'{"input": ["a"], "input": 7}',
        b'\xef\xbb\xbf{"input": "bom"}',
        gzip.compress(valid.encode()),  # compressed, but not said so
    ]
    return bodies


@pytest.mark.parametrize("path", ENVELOPE_POST_ROUTES + TEI_POST_ROUTES)
def test_random_bytes_get_a_4xx_in_the_dialects_body(client: httpx.Client, path: str) -> None:
    tei = path in TEI_POST_ROUTES
    for body in _byte_bodies():
        response = client.post(path, content=body, headers={"content-type": "application/json"})
        assert 400 <= response.status_code < 500, (body[:80], response.status_code, response.text)
        error = response.json()
        if tei:
            assert isinstance(error["error"], str) and error["error_type"], error
        else:
            assert set(error["error"]) == {"message", "type", "param", "code"}, error
    assert client.get("/health").status_code == 200
