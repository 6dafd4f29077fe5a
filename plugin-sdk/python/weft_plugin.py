"""Write weft commands in Python.

A plugin is a module of plain functions marked with ``@command``::

    from weft_plugin import command, call, log

    @command(resources=["text"], version="1.0.0")
    def shout(text: str, times: int = 1) -> str:
        \"\"\"Upper-case a text and repeat it.\"\"\"
        log.info(f"shouting {len(text)} characters")
        return " ".join([text.upper()] * times)

``weft plugin build DIR`` turns the module into a WebAssembly component with componentize-py
(0.25.1) against weft's WIT contract; this file is added to the build by it. The command is named
``MODULE.FUNCTION`` (here ``shout`` in ``stats.py`` is ``stats.shout``) unless ``name=`` says otherwise.

Arguments and results are JSON values. Positional and keyword arguments are bound to the
function's parameters the way Python binds them; arguments that do not fit are an ``invalid-args``
error naming the command. An exception the function raises fails the call (error 1003) with
``ExceptionType: message``; raise ``ArgumentError`` for an ``invalid-args`` error instead.
"""

from __future__ import annotations

import inspect
import json
from typing import Any, Callable, Iterable

import wit_world
from componentize_py_types import Err
from wit_world.imports import host, types

__all__ = ["command", "call", "log", "ArgumentError", "CallError", "WitWorld"]


class ArgumentError(Exception):
    """Raised by a command whose arguments are wrong: the caller gets an ``invalid-args`` error."""


class CallError(Exception):
    """A command reached through ``call`` did not produce a result.

    ``kind`` is one of ``invalid-args``, ``failed``, ``not-found``, ``denied`` and ``timeout``. Left
    uncaught, it fails the calling command with the same kind and message.
    """

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


_KINDS = {
    types.CallError_InvalidArgs: "invalid-args",
    types.CallError_Failed: "failed",
    types.CallError_NotFound: "not-found",
    types.CallError_Denied: "denied",
    types.CallError_Timeout: "timeout",
}
_VARIANTS = {kind: variant for variant, kind in _KINDS.items()}


class _Command:
    def __init__(self, fn: Callable[..., Any], name: str, resources: list[str], version: str, description: str):
        self.fn = fn
        self.name = name
        self.resources = resources
        self.version = version
        self.description = description
        self.signature = inspect.signature(fn)
        self.params = [
            p.name
            for p in self.signature.parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]

    def spec(self) -> types.CommandSpec:
        return types.CommandSpec(
            name=self.name,
            resources=self.resources,
            version=self.version,
            description=self.description,
            params=self.params,
        )


_commands: dict[str, _Command] = {}


def command(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    resources: Iterable[str] = (),
    version: str = "1.0.0",
    description: str | None = None,
):
    """Serve a function as a fabric command; usable bare (``@command``) or with options."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        full_name = name or f"{fn.__module__}.{fn.__name__}"
        if full_name in _commands:
            raise ValueError(f"two functions claim the command {full_name}")
        doc = description if description is not None else (inspect.getdoc(fn) or "").split("\n")[0]
        _commands[full_name] = _Command(fn, full_name, list(resources), version, doc)
        return fn

    if fn is not None:
        return register(fn)
    return register


def call(fun: str, *args: Any, resources: Iterable[str] = (), **kwargs: Any) -> Any:
    """Call any command of the fabric, routed like a client call, and return its result.

    Raises ``CallError`` when the command fails, is not found or runs out of time.
    """
    try:
        result = host.call(fun, json.dumps(list(args)), json.dumps(kwargs), list(resources))
    except Err as e:
        raise CallError(_KINDS.get(type(e.value), "failed"), str(e.value.value)) from None
    return json.loads(result)


class _Log:
    """Log lines become the node's ``tracing`` events, tagged with the plugin and the command."""

    def trace(self, message: str) -> None:
        host.log(host.Level.TRACE, str(message))

    def debug(self, message: str) -> None:
        host.log(host.Level.DEBUG, str(message))

    def info(self, message: str) -> None:
        host.log(host.Level.INFO, str(message))

    def warn(self, message: str) -> None:
        host.log(host.Level.WARN, str(message))

    def error(self, message: str) -> None:
        host.log(host.Level.ERROR, str(message))


log = _Log()


def _fail(kind: str, message: str) -> Err:
    return Err(_VARIANTS[kind](message))


class WitWorld(wit_world.WitWorld):
    """The component's exports: weft calls these; plugin authors never do."""

    def describe(self) -> list[types.CommandSpec]:
        return [c.spec() for c in _commands.values()]

    def invoke(self, command: str, args_json: str, kwargs_json: str) -> str:
        found = _commands.get(command)
        if found is None:
            raise _fail("not-found", f"this plugin does not serve {command}")
        try:
            args = json.loads(args_json) if args_json else []
            kwargs = json.loads(kwargs_json) if kwargs_json else {}
        except ValueError as e:
            raise _fail("invalid-args", f"{command}: arguments are not JSON: {e}")
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise _fail("invalid-args", f"{command}: arguments must be a list and keyword arguments an object")
        try:
            bound = found.signature.bind(*args, **kwargs)
        except TypeError as e:
            raise _fail("invalid-args", f"{command}: {e}")
        try:
            result = found.fn(*bound.args, **bound.kwargs)
        except ArgumentError as e:
            raise _fail("invalid-args", f"{command}: {e}")
        except CallError as e:
            raise _fail(e.kind, e.message)
        except Exception as e:  # every failure of the author's code reaches the caller
            raise _fail("failed", f"{type(e).__name__}: {e}")
        try:
            return json.dumps(result)
        except (TypeError, ValueError) as e:
            raise _fail("failed", f"{command}: the result is not JSON: {e}")
