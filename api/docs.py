"""Interactive API docs at ``/docs`` that render with no internet (Swagger UI is served
locally), and the examples every route shows there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import swagger_ui_bundle
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Example
from litestar.params import Body, BodyKwarg
from litestar.static_files import create_static_files_router
from litestar.types import ControllerRouterHandler

__all__ = ["ASSETS_PATH", "VECTOR", "answers", "docs_assets", "openapi_config", "sends"]

ASSETS_PATH = "/docs/assets"


def openapi_config(version: str) -> OpenAPIConfig:
    return OpenAPIConfig(
        title="BGE Inference Service",
        version=version,
        path="/docs",
        render_plugins=[
            SwaggerRenderPlugin(
                path="/",
                js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
                css_url=f"{ASSETS_PATH}/swagger-ui.css",
                standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-standalone-preset.js",
                favicon=f'<link rel="icon" href="{ASSETS_PATH}/favicon-32x32.png">',
            )
        ],
    )


def docs_assets() -> ControllerRouterHandler:
    folder = Path(swagger_ui_bundle.swagger_ui_path)
    return create_static_files_router(
        path=ASSETS_PATH, directories=[folder], include_in_schema=False
    )


VECTOR = [0.0213, -0.0471, 0.0133, 0.0362]
"""A dense vector in examples: bge-m3's has 1,024 numbers."""


def sends(value: object, summary: str = "Example") -> BodyKwarg:
    """The request body example a route shows (``data: Annotated[Request, sends(...)]``)."""
    kwarg: BodyKwarg = Body(examples=[Example(summary=summary, value=value)])
    return kwarg


def answers(
    container: Any, value: object, errors: dict[int, ResponseSpec]
) -> dict[int, ResponseSpec]:
    """A route's documented responses: 200 with ``value`` as its example, then its errors."""
    ok = ResponseSpec(
        data_container=container,
        description="OK",
        generate_examples=False,
        examples=[Example(summary="Example", value=value)],
    )
    return {200: ok, **errors}
