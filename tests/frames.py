"""Validate frames against the AsyncAPI document with jsonschema.

conftest.py wraps every way a test reads a server frame (WebsocketCommunicator and the
websockets client) with `check_server_frame`, so every frame the server sends in the
suite is checked against the schema, whoever wrote the test. The document is the one
generated for the message types declared right now: docs/asyncapi.yaml when the installed
apps are the project's (tests/test_asyncapi.py pins that), with a test app's types when a
test installs one.
"""

import functools
import json
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from sessions_app import message_types
from sessions_app.asyncapi import document_text

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "docs" / "asyncapi.yaml"
SCHEMA_URI = "urn:wss-sessions:asyncapi"


def asyncapi() -> dict[str, Any]:
    """The parsed AsyncAPI document for the message types declared now."""
    return document_for(message_types.registry())


@functools.cache
def document_for(declared: message_types.Registry) -> dict[str, Any]:
    return yaml.safe_load(document_text(declared))


def validator(schema_name: str) -> Draft7Validator:
    """A validator for one of components.schemas, resolving $refs inside the document."""
    return validator_for(message_types.registry(), schema_name)


@functools.cache
def validator_for(declared: message_types.Registry, schema_name: str) -> Draft7Validator:
    """AsyncAPI 3's default schema format is a superset of JSON Schema draft 7."""
    registry = Registry().with_resource(SCHEMA_URI, Resource(contents=document_for(declared), specification=DRAFT7))
    schema = {"$ref": f"{SCHEMA_URI}#/components/schemas/{schema_name}"}
    return Draft7Validator(schema, registry=registry, format_checker=Draft7Validator.FORMAT_CHECKER)


def check_server_frame(frame: str | bytes | dict, *, path: str = "/ws") -> None:
    """Raise jsonschema.ValidationError unless `frame` is a server frame of the channel at `path` (text JSON only)."""
    if isinstance(frame, bytes):
        raise AssertionError(f"the server sent a binary frame, which the protocol never does: {frame[:64]!r}")
    obj = json.loads(frame) if isinstance(frame, str) else frame
    validator(server_frame_schema(path)).validate(obj)


def server_frame_schema(path: str) -> str:
    """The schema of the frames the server sends on the channel at `path`."""
    admin_live = asyncapi()["channels"]["adminLive"]["address"]
    return "AdminLiveServerFrame" if path.rstrip("/") == admin_live.rstrip("/") else "ServerFrame"


def check_client_frame(frame: dict) -> None:
    """Raise jsonschema.ValidationError unless `frame` is a valid ClientFrame."""
    validator("ClientFrame").validate(frame)


def error_codes() -> dict[str, int | None]:
    """Each error code in the schema with its close code (None: the connection stays open)."""
    return {
        entry["const"]: entry["x-close-code"] for entry in asyncapi()["components"]["schemas"]["ErrorCode"]["oneOf"]
    }


def client_message_types() -> set[str]:
    """The `type` of every client frame in the schema."""
    schemas = asyncapi()["components"]["schemas"]
    names = [ref["$ref"].rsplit("/", 1)[1] for ref in schemas["ClientFrame"]["oneOf"]]
    return {schemas[name]["properties"]["type"]["const"] for name in names}


def close_codes() -> set[int]:
    """The close codes the schema documents."""
    return {int(code) for code in asyncapi()["channels"]["session"]["x-close-codes"]}
