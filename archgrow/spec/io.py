"""Reading specs from YAML/JSON files or dicts, and turning validation failures into one line each.

Pydantic's own messages name the model's internals (union tags, ``Value error,``); a user needs
the file, the field path as written in the file, and what would have been accepted.
"""

from __future__ import annotations

import json
import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from archgrow.errors import SpecError
from archgrow.spec.kinds import INITIALIZERS, TRIGGERS
from archgrow.spec.schema import ByKind, Spec

SpecLike = Spec | dict | str | os.PathLike


def load_spec(path: str | os.PathLike) -> Spec:
    """Read and validate a spec file (``.yaml``/``.yml``/``.json``); raises :class:`SpecError`."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(f"{source}: no such file", problems=[f"{source}: no such file"]) from None
    except OSError as exc:
        msg = f"{source}: cannot read: {exc.strerror}"
        raise SpecError(msg, problems=[msg]) from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            msg = f"{source}: line {exc.lineno}: invalid JSON: {exc.msg}"
            raise SpecError(msg, problems=[msg]) from None
    elif path.suffix.lower() in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}: " if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc)
            msg = f"{source}: {where}invalid YAML: {problem}"
            raise SpecError(msg, problems=[msg]) from None
    else:
        msg = f"{source}: unknown spec format '{path.suffix}'; accepted: .yaml, .yml, .json"
        raise SpecError(msg, problems=[msg])
    return parse_spec(data, source=source)


def parse_spec(data: Any, source: str = "<dict>") -> Spec:
    """Validate a spec given as a mapping (the parsed content of a file)."""
    if data is None:
        msg = f"{source}: the spec is empty; expected a mapping with 'version' and 'rules'"
        raise SpecError(msg, problems=[msg])
    if not isinstance(data, dict):
        msg = f"{source}: the spec must be a mapping with 'version' and 'rules', got {type(data).__name__}"
        raise SpecError(msg, problems=[msg])
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        problems = [f"{source}: {line}" for line in format_errors(exc)]
        raise SpecError("\n".join(problems), problems=problems) from None
    return spec.located(source)


def as_spec(spec: SpecLike) -> Spec:
    """A :class:`Spec` from a spec, a mapping, or a path."""
    if isinstance(spec, Spec):
        return spec
    if isinstance(spec, dict):
        return parse_spec(spec)
    if isinstance(spec, (str, os.PathLike)):
        return load_spec(spec)
    raise SpecError(f"spec must be a Spec, a dict or a path to a YAML/JSON file, got {type(spec).__name__}")


def json_schema() -> dict[str, Any]:
    """The JSON Schema of spec files (for editors and other tools)."""
    schema = Spec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "archgrow growth spec"
    return schema


# --------------------------------------------------------------------------- error formatting
def format_errors(exc: ValidationError, root: type[BaseModel] = Spec) -> list[str]:
    """One ``field.path: message`` line per problem, with the accepted values (``root``: the validated model)."""
    lines = []
    for err in exc.errors(include_url=False):
        path, model = _path_and_model(err["loc"], root)
        lines.append(f"{path or '(top level)'}: {_message(err, model, path)}")
    return lines


def _path_and_model(loc: tuple[Any, ...], root: type[BaseModel]) -> tuple[str, type[BaseModel] | None]:
    """The field path as the user wrote it (union tags dropped), and the model that owns its last part."""
    parts: list[str] = []
    model: Any = root
    parent: Any = None
    for item in loc:
        if isinstance(item, int):
            if parts:
                parts[-1] += f"[{item}]"
            model = _list_item(model)
        elif _is_union(model) and (member := _union_member(model, item)) is not None:
            model = member
        else:
            parts.append(str(item))
            parent = model
            fields = getattr(model, "model_fields", {}) if isinstance(model, type) else {}
            field = fields.get(item)
            by_kind = [m for m in field.metadata if isinstance(m, ByKind)] if field is not None else []
            model = by_kind[0] if by_kind else (_unwrap(field.annotation) if field is not None else None)
    owner = parent if isinstance(parent, type) and issubclass(parent, BaseModel) else None
    return ".".join(parts), owner


def _unwrap(annotation: Any) -> Any:
    """Strip Optional/Annotated so unions of models and list element types stay visible."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        by_kind = [m for m in annotation.__metadata__ if isinstance(m, ByKind)]
        return by_kind[0] if by_kind else _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _unwrap(args[0])
        return typing.Union[tuple(_unwrap(a) for a in args)]  # noqa: UP007
    return annotation


def _list_item(annotation: Any) -> Any:
    if typing.get_origin(annotation) is list:
        return _unwrap(typing.get_args(annotation)[0])
    return None


def _is_union(annotation: Any) -> bool:
    return isinstance(annotation, ByKind) or typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _union_member(annotation: Any, kind: str) -> Any:
    if isinstance(annotation, ByKind):
        return annotation.member(kind)
    for arg in typing.get_args(annotation):
        field = getattr(arg, "model_fields", {}).get("kind")
        if field is not None and field.default == kind:
            return arg
    return None


def _accepted_kinds(path: str, ctx: dict[str, Any]) -> str:
    field = path.rsplit(".", 1)[-1]
    if field.startswith("initializer"):
        return ", ".join(INITIALIZERS)
    if field.startswith("trigger"):
        return ", ".join(TRIGGERS)
    return str(ctx.get("expected_tags", "")).replace("'", "")


def _message(err: dict[str, Any], model: type[BaseModel] | None, path: str) -> str:
    kind = err["type"]
    given = err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "union_tag_invalid":
        return f"unknown kind {ctx.get('tag')!r}; accepted kinds: {_accepted_kinds(path, ctx)}"
    if kind == "union_tag_not_found":
        return f"missing 'kind'; accepted kinds: {_accepted_kinds(path, ctx)}"
    if kind == "extra_forbidden":
        field = path.rsplit(".", 1)[-1]
        accepted = ", ".join(model.model_fields) if model else "see `archgrow schema`"
        return f"unknown field '{field}'; accepted fields: {accepted}"
    if kind == "missing":
        return "required field is missing"
    if kind == "literal_error":
        return f"got {given!r}; accepted: {ctx.get('expected')}"
    if kind == "model_type" or kind == "model_attributes_type":
        return f"expected a mapping, got {type(given).__name__}"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        return msg[len("Value error, ") :]
    msg = msg[0].lower() + msg[1:]
    return f"{msg}; got {given!r}"
