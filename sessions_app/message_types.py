"""Client message types, declared by any installed app: a wire name, a JSON Schema, an async handler.

An app declares its types in its own `session_messages.py`, as template tags are declared
in `templatetags/`::

    from sessions_app.message_types import Library

    register = Library()

    @register.message_type("list_workspace", schema={"type": "object", "properties": {...}})
    async def list_workspace(context, message):
        \"\"\"List a directory of the session's workspace.\"\"\"
        return {"entries": [...]}  # the reply's fields; None sends no reply

At start (`SessionsAppConfig.ready`) every installed app's module is imported and its
`register` merged into the process's `Registry`; a bad declaration raises
ImproperlyConfigured there, never when a client first sends the type. The core's own types
(sessions_app/session_messages.py) are declared the same way and come first. Pure: imports
neither Channels nor the ORM.
"""

import importlib
import inspect
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured
from jsonschema import Draft7Validator, SchemaError
from jsonschema.exceptions import best_match

from . import protocol
from .errors import InvalidRequest, RequestId

if TYPE_CHECKING:
    from django.apps import AppConfig

    from .process import ProcessIdentity
    from .sessions import SessionRecord

MODULE_NAME = "session_messages"  # looked for in every installed app
CORE_APP = "sessions_app"
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
RESERVED_FIELDS = frozenset({"type", "request_id"})  # the envelope's, checked by the core for every type
MAX_ERROR_CHARS = 200  # a schema error quotes the offending value: keep the reply short

Reply = Mapping[str, Any] | None
Handler = Callable[["MessageContext", Any], Awaitable[Reply]]


@dataclass(frozen=True, slots=True)
class ClientMessage(protocol.Message):
    """A message of a declared type: its fields (all but `type` and `request_id`), schema-checked."""

    type: str  # an instance field here, not a ClassVar: one class serves every declared type
    fields: Mapping[str, Any]
    request_id: RequestId | None = None


@dataclass(frozen=True)
class MessageType:
    """One client message type: its wire name, schema, handler, and whether it needs a session."""

    name: str
    schema: Mapping[str, Any]
    handler: Handler
    needs_session: bool = True
    # A message class whose parse() validates with its own messages (the core's); the schema then documents it.
    message: type[protocol.Message] | None = None
    # For the AsyncAPI document: the reply's schema (its fields), or the name of a reply message documented there.
    reply_schema: Mapping[str, Any] | None = None
    reply_message: str | None = None
    examples: tuple[Mapping[str, Any], ...] = ()
    module: str = ""  # where it was declared, for error messages
    validator: Draft7Validator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        checker = Draft7Validator.FORMAT_CHECKER
        object.__setattr__(self, "validator", Draft7Validator(self.schema, format_checker=checker))

    @property
    def title(self) -> str:
        """The handler's one-line docstring."""
        return inspect.getdoc(self.handler).splitlines()[0]

    def parse(self, fields: Mapping[str, Any], request_id: RequestId | None) -> protocol.Message:
        """Validate a decoded frame of this type into its message, or raise InvalidRequest naming the field."""
        if self.message is not None:
            return self.message.parse(fields, request_id)
        own = {key: value for key, value in fields.items() if key not in RESERVED_FIELDS}
        error = best_match(self.validator.iter_errors(own))
        if error is not None:
            raise InvalidRequest(schema_error_text(error))
        return ClientMessage(type=self.name, fields=MappingProxyType(own), request_id=request_id)


def schema_error_text(error: Any) -> str:
    """A jsonschema error as a sentence that names the field by its JSON pointer."""
    pointer = "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in error.absolute_path)
    detail = error.message if len(error.message) <= MAX_ERROR_CHARS else error.message[:MAX_ERROR_CHARS] + "…"
    where = f"The field {pointer}" if pointer else "The message"
    return f"{where} is invalid: {detail}."


def declaration_check(declaration: MessageType) -> None:
    """Raise ImproperlyConfigured unless the declaration can be served."""
    where = f"message type {declaration.name!r} ({declaration.module})"
    if not NAME_PATTERN.match(declaration.name):
        raise ImproperlyConfigured(f"{where}: the name must match {NAME_PATTERN.pattern}")
    if not inspect.iscoroutinefunction(declaration.handler):
        raise ImproperlyConfigured(f"{where}: the handler must be an `async def` function")
    if not inspect.getdoc(declaration.handler):
        raise ImproperlyConfigured(f"{where}: the handler needs a docstring (it titles the type in the docs)")
    for label, schema in (("schema", declaration.schema), ("reply_schema", declaration.reply_schema)):
        if schema is None:
            continue
        try:
            Draft7Validator.check_schema(schema)
        except SchemaError as error:
            raise ImproperlyConfigured(f"{where}: the {label} is not a valid JSON Schema: {error.message}") from None
        if schema.get("type") != "object":
            raise ImproperlyConfigured(f'{where}: the {label} must describe an object ("type": "object")')
        reserved = RESERVED_FIELDS & set(schema.get("properties", {}))
        if reserved:
            raise ImproperlyConfigured(f"{where}: the {label} may not declare {sorted(reserved)}: the core does")
    for example in declaration.examples:
        if example.get("type") != declaration.name:
            raise ImproperlyConfigured(f"{where}: an example's type must be {declaration.name!r}")


class Library:
    """One app's declarations, collected by the `message_type` decorator: `register = Library()`."""

    def __init__(self) -> None:
        self.declarations: list[MessageType] = []

    def message_type(
        self,
        name: str,
        *,
        schema: Mapping[str, Any],
        needs_session: bool = True,
        reply_schema: Mapping[str, Any] | None = None,
        examples: Iterable[Mapping[str, Any]] = (),
        message: type[protocol.Message] | None = None,
        reply_message: str | None = None,
    ) -> Callable[[Handler], Handler]:
        """Declare the decorated async function as the handler of the client message type `name`."""

        def declare(handler: Handler) -> Handler:
            declaration = MessageType(
                name=name,
                schema=schema,
                handler=handler,
                needs_session=needs_session,
                message=message,
                reply_schema=reply_schema,
                reply_message=reply_message,
                examples=tuple(examples),
                module=handler.__module__,
            )
            declaration_check(declaration)
            self.declarations.append(declaration)
            return handler

        return declare


class Registry(Mapping[str, MessageType]):
    """Every declared type of the process, by wire name: what `protocol.decode` and the consumer look up."""

    def __init__(self, declarations: Iterable[MessageType]) -> None:
        self._types: dict[str, MessageType] = {}
        for declaration in declarations:
            previous = self._types.get(declaration.name)
            if previous is not None:
                raise ImproperlyConfigured(
                    f"message type {declaration.name!r} is declared twice: by {previous.module!r} "
                    f"and by {declaration.module!r}"
                )
            self._types[declaration.name] = declaration

    def __getitem__(self, name: str) -> MessageType:
        return self._types[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._types)

    def __len__(self) -> int:
        return len(self._types)

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other

    @classmethod
    def from_modules(cls, module_names: Iterable[str]) -> "Registry":
        """The declarations of the given `session_messages` modules, in order."""
        declarations: list[MessageType] = []
        for module_name in module_names:
            library = getattr(importlib.import_module(module_name), "register", None)
            if not isinstance(library, Library):
                raise ImproperlyConfigured(f"{module_name} must define `register = Library()` (sessions_app)")
            declarations.extend(library.declarations)
        return cls(declarations)


def app_modules(app_configs: Iterable["AppConfig"]) -> list[str]:
    """The `session_messages` modules of the given apps, the core's first."""
    from django.utils.module_loading import module_has_submodule

    found = [
        f"{config.name}.{MODULE_NAME}" for config in app_configs if module_has_submodule(config.module, MODULE_NAME)
    ]
    return sorted(found, key=lambda name: name != f"{CORE_APP}.{MODULE_NAME}")


def registry() -> Registry:
    """The declared types of the installed apps: built once by `SessionsAppConfig.ready()`, kept on it."""
    from django.apps import apps

    return apps.get_app_config(CORE_APP).message_types


@dataclass(frozen=True, slots=True)
class MessageContext:
    """What a handler gets besides the message: the connection's session, user and process."""

    session: "SessionRecord | None"
    user: Any  # the scope's user: a Django user, AnonymousUser, or None
    process: "ProcessIdentity"
    request_id: RequestId | None
    # The consumer itself: only the core's own handlers use it.
    connection: Any = field(default=None, repr=False)

    @property
    def session_id(self) -> Any:
        """The session's UUID, or None when the connection holds none."""
        return None if self.session is None else self.session.session_id

    @property
    def workspace_dir(self) -> str | None:
        """The real path of the session's workspace, or None."""
        return None if self.session is None else self.session.workspace_dir

    async def send_event(self, event: str, data: Any) -> int:
        """Push a `session_event` to this session (sessions_app/delivery.py); returns its seq."""
        from .delivery import asend_session_event  # delivery imports the models: not loaded before the apps

        if self.session is None:
            raise RuntimeError("send_event needs a session: declare the type with needs_session=True")
        return await asend_session_event(session_id=self.session.session_id, event=event, data=data)
