"""GET /openapi.json: an OpenAPI 3.1 description of the HTTP API, built by starlette's
`SchemaGenerator` from the routes themselves and their endpoints' docstrings (the first paragraph
is the summary, the rest the description), so it cannot list a route the app does not have or
miss one it has."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

from starlette.routing import BaseRoute
from starlette.schemas import SchemaGenerator

from stream_server.core.version import version_string

PATH_PARAM = re.compile(r"{(\w+)}")


class DocstringSchema(SchemaGenerator):
    def __init__(self) -> None:
        super().__init__(
            {
                "openapi": "3.1.0",
                "info": {
                    "title": "deepfake-live",
                    "version": version_string("deepfake-serve").split()[-1],
                    "description": "Live deepfake detection: WebRTC sessions, RTSP cameras, "
                    'uploads, health and metrics. Errors are JSON {"error": reason}.',
                },
            }
        )

    def parse_docstring(self, func_or_method: Callable[..., Any]) -> dict[str, Any]:
        doc = inspect.getdoc(func_or_method) or ""
        summary, _, rest = doc.partition("\n\n")
        if not summary.strip():
            return {}
        op: dict[str, Any] = {
            "summary": " ".join(summary.split()),
            "responses": {"default": {"description": 'see the summary; errors: {"error": why}'}},
        }
        if rest.strip():
            op["description"] = rest.strip()
        return op

    def get_schema(self, routes: list[BaseRoute]) -> dict[str, Any]:
        schema = super().get_schema(routes)
        for path, ops in schema["paths"].items():
            params = [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in PATH_PARAM.findall(path)
            ]
            if params:
                for op in ops.values():
                    op["parameters"] = params
        return schema
