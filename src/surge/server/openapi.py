"""The OpenAPI 3.0 description of the V2 HTTP API, served at `GET /v2/openapi.json`.

It lists what `surge.server.app` answers, status by status, so that a schema-driven fuzzer
(the production test suite runs schemathesis) can check every response against it.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import surge

OPENAPI_PATH = "openapi.json"  # under /v2

_ERROR = {"$ref": "#/components/schemas/Error"}
_NOT_READY = {"type": "object", "required": ["error", "state", "reason"], "properties": {
    "error": {"type": "string"}, "state": {"type": "string"}, "reason": {"type": "string"}}}
_NAME = {"name": "model", "in": "path", "required": True,
         "schema": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"}}
_VERSION = {"name": "version", "in": "path", "required": True,
            "schema": {"type": "string", "pattern": "^[1-9][0-9]{0,8}$"}}

_STATUS_TEXT = {400: "bad request (message names the problem)", 401: "missing or wrong API key",
                403: "the key lacks the scope", 404: "unknown model, version or route",
                413: "body over the limit", 503: "not ready, queue full or draining",
                504: "deadline passed in the queue"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): {"description": _STATUS_TEXT[s], **_json(_ERROR)} for s in statuses}


def _ok(schema: dict[str, Any] | None, description: str = "success") -> dict[str, Any]:
    return {"description": description, **(_json(schema) if schema is not None else {})}


def _get(summary: str, schema: dict[str, Any], *errors: int) -> dict[str, Any]:
    return {"get": {"summary": summary, "responses": {"200": _ok(schema),
                                                      **_errors(401, 403, *errors)}}}


def _versioned(paths: dict[str, Any], suffix: str, item: dict[str, Any]) -> None:
    """`/v2/models/{model}<suffix>` and its `/versions/{version}` twin."""
    paths[f"/v2/models/{{model}}{suffix}"] = {**item, "parameters": [_NAME]}
    paths[f"/v2/models/{{model}}/versions/{{version}}{suffix}"] = {
        **item, "parameters": [_NAME, _VERSION]}


def _model_paths() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    ref = "#/components/schemas/"
    _versioned(paths, "", _get("model metadata", {"$ref": ref + "ModelMetadata"}, 400, 404))
    _versioned(paths, "/config", _get("Triton model configuration", {"type": "object"},
                                      400, 404))
    _versioned(paths, "/stats", _get("Triton statistics", {"$ref": ref + "Statistics"},
                                     400, 404))
    _versioned(paths, "/ready", {"get": {"summary": "model readiness", "responses": {
        "200": _ok(None, "ready"),
        "503": {"description": "in the repository, not ready: its state (LOADING, UNLOADED, "
                "EVICTED, UNAVAILABLE) and the reason", **_json(_NOT_READY)},
        **_errors(400, 401, 403, 404)}}})
    infer = {"post": {
        "summary": "inference (JSON; the binary extension uses application/octet-stream)",
        "requestBody": {"required": True, **_json({"$ref": ref + "InferRequest"})},
        "responses": {"200": _ok({"$ref": ref + "InferResponse"}),
                      **_errors(400, 401, 403, 404, 413, 503, 504)},
        "parameters": [{"name": "x-request-id", "in": "header", "required": False,
                        "schema": {"type": "string"}}],
    }}
    _versioned(paths, "/infer", infer)
    _generate_paths(paths)
    return paths


def _generate_paths(paths: dict[str, Any]) -> None:
    """Triton's generate extension: inputs as plain JSON values, the answer's outputs too."""
    body = {"type": "object", "additionalProperties": True, "properties": {
        "id": {"type": "string"}, "parameters": {"type": "object"}},
        "description": "one key per model input, its value a string, number, bool or "
                       "(nested) list of them"}
    answer = {"type": "object", "required": ["model_name", "model_version"],
              "additionalProperties": True, "properties": {
                  "model_name": {"type": "string"}, "model_version": {"type": "string"},
                  "id": {"type": "string"}, "variant": {"type": "string"}},
              "description": "one key per output: a single value, or a flat list"}
    errors = _errors(400, 401, 403, 404, 413, 503, 504)
    for suffix, summary, content in (
            ("/generate", "generate extension: plain JSON inputs and outputs", _json(answer)),
            ("/generate_stream", "generate extension: the answer as one Server-Sent Event",
             {"content": {"text/event-stream": {"schema": {"type": "string"}}}})):
        _versioned(paths, suffix, {"post": {
            "summary": summary, "requestBody": {"required": True, **_json(body)},
            "responses": {"200": {"description": "success", **content}, **errors}}})


def _repository_paths() -> dict[str, Any]:
    ref = "#/components/schemas/"
    action = {"post": {
        "requestBody": {"required": False, **_json({"$ref": ref + "LoadRequest"})},
        "responses": {"200": _ok(None), **_errors(400, 401, 403, 404)},
    }, "parameters": [_NAME]}
    index_body = {"type": "object", "properties": {"ready": {"type": "boolean"}}}
    return {
        "/v2/repository/index": {"post": {
            "summary": "models in the repository with their state and the reason",
            "requestBody": {"required": False, **_json(index_body)},
            "responses": {"200": _ok({"type": "array", "items": {"$ref": ref + "IndexEntry"}}),
                          **_errors(400, 401, 403)}}},
        "/v2/repository/models/{model}/load": action,
        "/v2/repository/models/{model}/unload": action,
    }


def _logging_paths() -> dict[str, Any]:
    """Triton's logging extension: the settings read and changed whole or in part."""
    settings = {"$ref": "#/components/schemas/LogSettings"}
    return {"/v2/logging": {
        **_get("the server's log settings", settings),
        "post": {"summary": "change log settings (those left out or null stay as they are)",
                 "requestBody": {"required": True, **_json(settings)},
                 "responses": {"200": _ok(settings), **_errors(400, 401, 403)}}}}


def _trace_paths() -> dict[str, Any]:
    """Triton's trace extension: the global settings, or a model's own over them."""
    settings = {"$ref": "#/components/schemas/TraceSettings"}
    item = {**_get("the trace settings in force", settings, 400, 404),
            "post": {"summary": "change trace settings (those left out stay as they are; null "
                                "clears a model's own, or puts a global one back)",
                     "requestBody": {"required": False, **_json(settings)},
                     "responses": {"200": _ok(settings), **_errors(400, 401, 403, 404, 413)}}}
    return {"/v2/trace/setting": item,
            "/v2/models/{model}/trace/setting": {**item, "parameters": [_NAME]}}


def _shared_memory_paths() -> dict[str, Any]:
    """The shared-memory extension's system regions and CUDA's (whose register is refused)."""
    region = {"name": "region", "in": "path", "required": True, "schema": {"type": "string"}}
    status = {**_get("registered regions", {"type": "array", "items": {"type": "object"}},
                     400, 404)}
    change = {"post": {"responses": {"200": _ok(None), **_errors(400, 401, 403, 404)}}}
    register = {"post": {
        "requestBody": {"required": True, **_json({"type": "object", "properties": {
            "key": {"type": "string"}, "offset": {"type": "integer"},
            "byte_size": {"type": "integer"}}})},
        "responses": {"200": _ok(None), **_errors(400, 401, 403, 404)}},
        "parameters": [region]}
    paths: dict[str, Any] = {}
    for kind in ("systemsharedmemory", "cudasharedmemory"):
        paths[f"/v2/{kind}/status"] = status
        paths[f"/v2/{kind}/unregister"] = change
        paths[f"/v2/{kind}/region/{{region}}/status"] = {**status, "parameters": [region]}
        paths[f"/v2/{kind}/region/{{region}}/unregister"] = {**change, "parameters": [region]}
        paths[f"/v2/{kind}/region/{{region}}/register"] = register
    return paths


def _schemas() -> dict[str, Any]:
    tensor_fields: dict[str, Any] = {
        "name": {"type": "string"}, "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}}}
    required = ["name", "datatype", "shape"]
    tensor_meta = {"type": "object", "required": required, "properties": tensor_fields}
    tensor = {"type": "object", "required": required, "properties": {
        **tensor_fields, "data": {"type": "array"}, "parameters": {"type": "object"}}}
    return {
        "Error": {"type": "object", "required": ["error"],
                  "properties": {"error": {"type": "string"}}},
        "ServerMetadata": {"type": "object", "required": ["name", "version", "extensions"],
                           "properties": {"name": {"type": "string"},
                                          "version": {"type": "string"},
                                          "extensions": {"type": "array",
                                                         "items": {"type": "string"}}}},
        "ModelMetadata": {"type": "object", "required": ["name", "platform", "inputs", "outputs"],
                          "properties": {"name": {"type": "string"},
                                         "versions": {"type": "array",
                                                      "items": {"type": "string"}},
                                         "platform": {"type": "string"},
                                         "inputs": {"type": "array", "items": tensor_meta},
                                         "outputs": {"type": "array", "items": tensor_meta}}},
        "Statistics": {"type": "object", "required": ["model_stats"],
                       "properties": {"model_stats": {"type": "array",
                                                      "items": {"type": "object"}}}},
        "InferRequest": {"type": "object", "required": ["inputs"], "properties": {
            "id": {"type": "string"}, "parameters": {"type": "object"},
            "inputs": {"type": "array", "items": tensor},
            "outputs": {"type": "array", "items": {"type": "object", "required": ["name"],
                                                   "properties": {"name": {"type": "string"}}}}}},
        "InferResponse": {"type": "object", "required": ["model_name", "outputs"], "properties": {
            "model_name": {"type": "string"}, "model_version": {"type": "string"},
            "id": {"type": "string"}, "parameters": {"type": "object"},
            "outputs": {"type": "array", "items": tensor}}},
        "IndexEntry": {"type": "object", "required": ["name", "state"], "properties": {
            "name": {"type": "string"}, "version": {"type": "string"},
            "state": {"type": "string"}, "reason": {"type": "string"}}},
        "LogSettings": {"type": "object", "properties": {
            "log_file": {"type": "string", "nullable": True},
            "log_info": {"type": "boolean", "nullable": True},
            "log_warning": {"type": "boolean", "nullable": True},
            "log_error": {"type": "boolean", "nullable": True},
            "log_verbose_level": {"type": "integer", "minimum": 0, "nullable": True},
            "log_format": {"type": "string", "enum": ["default", "ISO8601"], "nullable": True}}},
        "TraceSettings": {"type": "object", "properties": {
            "trace_level": {"type": "array", "nullable": True, "items": {
                "type": "string", "enum": ["OFF", "TIMESTAMPS"]}},
            "trace_rate": {"type": "string", "pattern": "^[0-9]+$", "nullable": True},
            "trace_count": {"type": "string", "pattern": "^-?[0-9]+$", "nullable": True},
            "trace_mode": {"type": "string", "enum": ["opentelemetry"], "nullable": True}}},
        "LoadRequest": {"type": "object", "properties": {"parameters": {
            "type": "object", "properties": {"config": {"oneOf": [{"type": "string"},
                                                                  {"type": "object"}]}}}}},
    }


@cache
def openapi_document() -> dict[str, Any]:
    """The whole description (built once)."""
    health = {"get": {"security": [], "responses": {"200": _ok(None, "yes"),
                                                    "503": _ok(None, "no")}}}
    paths = {
        "/v2": _get("server metadata", {"$ref": "#/components/schemas/ServerMetadata"}),
        "/v2/health/live": health,
        "/v2/health/ready": health,
        f"/v2/{OPENAPI_PATH}": _get("this description", {"type": "object"}),
        "/v2/models/stats": _get("statistics of every ready model",
                                 {"$ref": "#/components/schemas/Statistics"}),
        **_model_paths(),
        **_repository_paths(),
        **_logging_paths(),
        **_trace_paths(),
        **_shared_memory_paths(),
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "Surge V2 inference API (KServe V2 / Open Inference Protocol)",
                 "version": surge.__version__},
        "paths": paths,
        "components": {"schemas": _schemas(),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
    }


__all__ = ["OPENAPI_PATH", "openapi_document"]
