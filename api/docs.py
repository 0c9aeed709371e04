"""Interactive API docs at ``/docs`` that render with no internet: Swagger UI is served locally."""

from __future__ import annotations

from pathlib import Path

import swagger_ui_bundle
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.static_files import create_static_files_router
from litestar.types import ControllerRouterHandler

__all__ = ["ASSETS_PATH", "docs_assets", "openapi_config"]

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
