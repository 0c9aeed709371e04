"""What a RunPod job may ask, and how its answer is written back.

A job's ``input`` is one of:

- ``{"route": "/v1/hybrid-embeddings", "body": {...}}``: any route of the service
  (``"method"`` defaults to POST with a body, GET without);
- ``{"openai_route": "/v1/embeddings", "openai_input": {...}}``: the shape RunPod's
  own embedding and LLM workers take, for the same routes;
- ``{"texts": [...]}``: dense embeddings, answered ``{"embeddings": [[...], ...]}``;
- ``{"query": "...", "documents": [...]}``: rerank, answered
  ``{"results": [{"index", "score"}, ...]}`` best first.

A route's JSON answer is the job's output as it is. A failure is ``{"error": TEXT}``:
RunPod marks such a job FAILED and takes its error as a string (a dict error
leaves the job COMPLETED and empty), so TEXT is the JSON of the route's error
body (the same envelope as over HTTP) with ``http_status``, and ``retry_after``
when the route sent Retry-After, added.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from engine.errors import InvalidInput
from worker.asgi import Reply

__all__ = ["Call", "call_of", "failure", "output_of"]

_SHAPES = '{"route", "body"}, {"openai_route", "openai_input"}, {"texts"} or {"query", "documents"}'
_METHODS = frozenset({"GET", "POST"})


@dataclass(frozen=True, slots=True)
class Call:
    """One request to a route, and how its JSON answer becomes the job's output."""

    method: str
    route: str
    body: bytes | None
    reshape: Callable[[Any], Any] | None = None


def call_of(job_input: object) -> Call:
    if not isinstance(job_input, dict):
        raise InvalidInput(f"a job's input must be a JSON object: {_SHAPES}", param="input")
    if "route" in job_input:
        return _route_call(job_input, "route", "body")
    if "openai_route" in job_input:
        return _route_call(job_input, "openai_route", "openai_input")
    if "texts" in job_input:
        body = {"input": job_input["texts"]}
        if "model" in job_input:
            body["model"] = job_input["model"]
        return Call("POST", "/v1/embeddings", _encoded(body), _embeddings)
    if "query" in job_input and "documents" in job_input:
        fields = ("query", "documents", "top_n", "model")
        body = {key: job_input[key] for key in fields if key in job_input}
        return Call("POST", "/v1/rerank", _encoded(body), _results)
    keys = ", ".join(sorted(map(str, job_input))) or "none"
    raise InvalidInput(f"a job's input must be {_SHAPES}; it has keys {keys}", param="input")


def _route_call(job_input: dict[Any, Any], route_key: str, body_key: str) -> Call:
    route = job_input[route_key]
    if not isinstance(route, str) or not route.startswith("/"):
        raise InvalidInput(f"`{route_key}` must be a path such as /v1/embeddings", param=route_key)
    body = job_input.get(body_key)
    method = job_input.get("method", "GET" if body is None else "POST")
    if not isinstance(method, str) or method.upper() not in _METHODS:
        raise InvalidInput("`method` must be GET or POST", param="method")
    encoded = None if body is None and method.upper() == "GET" else _encoded(body)
    return Call(method.upper(), route, encoded)


def _encoded(body: object) -> bytes:
    """``body`` as JSON, written back as the caller's JSON had it.

    JSON's ``\\u`` escapes can carry a lone surrogate (``"\\udc00"``), which Python's json
    module (the SDK's) decodes into a str that no UTF-8 encoder takes. Such a body is
    written with the escapes kept, so the route refuses it exactly as it refuses the same
    body over HTTP (400), rather than the job failing here.
    """
    try:
        return msgspec.json.encode(body)
    except UnicodeEncodeError:
        return json.dumps(body, separators=(",", ":")).encode("ascii")


def _embeddings(answer: Any) -> Any:
    rows = sorted(answer["data"], key=lambda row: row["index"])
    return {"embeddings": [row["embedding"] for row in rows]}


def _results(answer: Any) -> Any:
    return {
        "results": [
            {"index": row["index"], "score": row["relevance_score"]} for row in answer["results"]
        ]
    }


def output_of(call: Call, reply: Reply) -> Any:
    """The job's output for the route's answer: its JSON (reshaped for the plan's shapes),
    or ``{"error": TEXT}`` for a status other than 2xx."""
    json = reply.headers.get("content-type", "").startswith("application/json")
    if not 200 <= reply.status < 300:
        body = msgspec.json.decode(reply.body) if json and reply.body else None
        if not isinstance(body, dict):
            text = reply.body.decode("utf-8", "replace")
            body = {
                "error": {"message": text, "type": "internal_error", "param": None, "code": None}
            }
        return failure(body, reply.status, reply.headers.get("retry-after"))
    if not json:
        return reply.body.decode("utf-8", "replace")  # /metrics' text, the docs' HTML
    answer = msgspec.json.decode(reply.body)
    return call.reshape(answer) if call.reshape is not None else answer


def failure(body: dict[str, Any], status: int, retry_after: str | None = None) -> dict[str, str]:
    detail = {**body, "http_status": status}
    if retry_after is not None and retry_after.isdigit():
        detail["retry_after"] = int(retry_after)
    return {"error": _encoded(detail).decode("utf-8")}
