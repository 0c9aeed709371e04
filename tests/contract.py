"""Checks JSON against the published OpenAPI documents of TEI and Infinity (``tests/contracts``).

TEI publishes OpenAPI 3.0, whose schema objects are JSON Schema draft 4 plus ``nullable``;
Infinity publishes OpenAPI 3.1, whose schema objects are JSON Schema 2020-12. Each document is
loaded once and registered whole under its own URI, so the ``#/components/schemas/...``
references inside it resolve the way the document's authors meant.
"""

from __future__ import annotations

import copy
import json
import re
from functools import cache
from pathlib import Path
from typing import Any, Literal

import httpx
import jsonschema
from jsonschema.exceptions import ValidationError, best_match
from jsonschema.protocols import Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4, DRAFT202012

Contract = Literal["tei", "infinity"]

CONTRACTS = Path(__file__).parent / "contracts"
FILES: dict[str, str] = {"tei": "tei-openapi.json", "infinity": "infinity-openapi.json"}

# A response documented without a body (TEI's 200 from /health): callers pass None for it.
NO_BODY: dict[str, Any] = {"type": "null"}


@cache
def document(contract: Contract) -> dict[str, Any]:
    """The OpenAPI document as published, parsed once."""
    loaded: dict[str, Any] = json.loads((CONTRACTS / FILES[contract]).read_text(encoding="utf-8"))
    return loaded


def _with_nullable(node: object) -> object:
    """OpenAPI 3.0's ``nullable: true`` rewritten as JSON Schema: the schema, or null.

    Only a boolean ``nullable`` is a keyword; a property that happens to be called "nullable"
    has a schema (a dict) as its value and is left alone.
    """
    if isinstance(node, list):
        return [_with_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: _with_nullable(value) for key, value in node.items()}
    if converted.get("nullable") is True:
        del converted["nullable"]
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


@cache
def _registry(contract: Contract) -> tuple[Registry[Any], str, type[Validator]]:
    doc = document(contract)
    uri = f"urn:contract:{contract}"
    if doc["openapi"].startswith("3.0"):
        resource: Resource[Any] = DRAFT4.create_resource(_with_nullable(copy.deepcopy(doc)))
        validator_class: type[Validator] = jsonschema.Draft4Validator
    else:
        resource = DRAFT202012.create_resource(doc)
        validator_class = jsonschema.Draft202012Validator
    registry: Registry[Any] = Registry().with_resource(uri, resource)
    return registry, uri, validator_class


def _pointer(*parts: str) -> str:
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in parts)


@cache
def _validator(contract: Contract, pointer: str) -> Validator:
    registry, uri, validator_class = _registry(contract)
    return validator_class({"$ref": f"{uri}#{pointer}"}, registry=registry)


def _check(contract: Contract, pointer: str, where: str, instance: object) -> None:
    error = best_match(_validator(contract, pointer).iter_errors(instance))
    if error is not None:
        # The bare message names neither the contract nor the schema; a failing test should.
        path = "".join(f"[{part!r}]" for part in error.absolute_path)
        error.message = f"{where}: instance{path}: {error.message}"
        raise error


def validate(contract: Contract, schema: str, instance: object) -> None:
    """Raise ``ValidationError`` unless ``instance`` fits ``components/schemas/<schema>``.

    An unknown schema name raises ``AssertionError``.
    """
    schemas = document(contract)["components"]["schemas"]
    if schema not in schemas:
        raise AssertionError(f"the {contract} contract has no schema {schema!r}")
    _check(contract, _pointer("components", "schemas", schema), f"{contract} {schema}", instance)


def _operation(contract: Contract, method: str, path: str) -> tuple[str, dict[str, Any]]:
    """The path template that documents ``path`` and its operation for ``method``."""
    paths: dict[str, Any] = document(contract)["paths"]
    template = path if path in paths else None
    if template is None:
        for candidate in paths:
            pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(candidate))
            if re.fullmatch(pattern, path):
                template = candidate
                break
    if template is None:
        raise AssertionError(f"the {contract} contract has no path {path}")
    operation = paths[template].get(method.lower())
    if operation is None:
        raise AssertionError(f"the {contract} contract has no {method.upper()} {path}")
    return template, operation


def _response_key(contract: Contract, method: str, path: str, status: int) -> tuple[str, str]:
    template, operation = _operation(contract, method, path)
    responses: dict[str, Any] = operation["responses"]
    # OpenAPI's precedence: the exact code, then its range ("4XX"), then "default".
    for key in (str(status), f"{status // 100}XX", "default"):
        if key in responses:
            return template, key
    raise AssertionError(
        f"{contract} {method.upper()} {path} documents no {status} response "
        f"(documented: {', '.join(responses)})"
    )


def _media_type(content: dict[str, Any]) -> str:
    return "application/json" if "application/json" in content else next(iter(content))


def response_schema(contract: Contract, method: str, path: str, status: int) -> dict[str, Any]:
    """The schema of the body ``method path`` answers with ``status``, as the document has it.

    References in it (``#/components/...``) are relative to the document. A response documented
    without a body has the schema ``{"type": "null"}``.
    """
    _, key = _response_key(contract, method, path, status)
    _, operation = _operation(contract, method, path)
    content: dict[str, Any] | None = operation["responses"][key].get("content")
    if not content:
        return dict(NO_BODY)
    schema: dict[str, Any] = copy.deepcopy(content[_media_type(content)].get("schema", {}))
    return schema


def validate_response(
    contract: Contract, method: str, path: str, status: int, instance: object
) -> None:
    """Raise unless ``instance`` (parsed JSON, None for no body) is what the contract documents."""
    template, key = _response_key(contract, method, path, status)
    _, operation = _operation(contract, method, path)
    where = f"{contract} {method.upper()} {path} {status}"
    content: dict[str, Any] | None = operation["responses"][key].get("content")
    if not content:
        if instance is not None:
            raise ValidationError(f"{where}: documented without a body, got {instance!r}")
        return
    media_type = _media_type(content)
    pointer = _pointer("paths", template, method.lower(), "responses", key, "content", media_type)
    _check(contract, pointer + "/schema", where, instance)


def request_schema(contract: Contract, method: str, path: str) -> dict[str, Any]:
    """The schema of the JSON body ``method path`` takes, as the document has it."""
    _, operation = _operation(contract, method, path)
    content: dict[str, Any] = operation["requestBody"]["content"]
    schema: dict[str, Any] = copy.deepcopy(content[_media_type(content)]["schema"])
    return schema


def validate_request(contract: Contract, method: str, path: str, instance: object) -> None:
    """Raise unless ``instance`` is a body the contract accepts for ``method path``."""
    template, operation = _operation(contract, method, path)
    if "requestBody" not in operation:
        raise AssertionError(f"{contract} {method.upper()} {path} takes no body")
    media_type = _media_type(operation["requestBody"]["content"])
    pointer = _pointer("paths", template, method.lower(), "requestBody", "content", media_type)
    _check(contract, pointer + "/schema", f"{contract} {method.upper()} {path} body", instance)


def post_checked(
    client: httpx.Client, contract: Contract, path: str, body: dict[str, Any], status: int = 200
) -> Any:
    """POST ``body`` (checked against the contract first) and return the answer, checked
    to be ``status`` and what the contract documents for it."""
    validate_request(contract, "POST", path, body)
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    answer = response.json()
    validate_response(contract, "POST", path, status, answer)
    return answer
