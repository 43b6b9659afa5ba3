"""Loading the YAML defaults into frozen, typo-proof settings models."""

from __future__ import annotations

import copy
import datetime as dt
import re
import types
from collections.abc import Collection, Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import IO, Annotated, Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from features.errors import InputError

Model = TypeVar("Model", bound=BaseModel)


class FrozenSettings(BaseModel):
    """Base of every settings model: immutable, and an unknown key is an error, not a default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _no_yes_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        """``horizon_days: true`` is refused, not read as 1 (pydantic takes a boolean for a
        number), and so is one among a mapping's or a list's numbers (``segments: {budget:
        yes}``): YAML reads yes, no, on and off as booleans too."""
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and _boolean_for_a_number(field.annotation, value):
            said = (
                f"{str(value).lower()} is not a number; give a number"
                if isinstance(value, bool)
                else "a boolean is among its numbers; give numbers"
            )
            raise ValueError(f"{said} (YAML reads true, false, yes, no, on and off as booleans)")
        return value


def _boolean_for_a_number(annotation: Any, value: Any) -> bool:
    """Whether ``value`` holds a boolean where ``annotation`` wants a number (and not also a
    boolean): itself, or one of a list's items or a mapping's values."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:  # a type that reads its values itself says what is wrong
        own = any(isinstance(m, PlainValidator | BeforeValidator) for m in args[1:])
        return not own and _boolean_for_a_number(args[0], value)
    if origin in (Union, types.UnionType):
        if isinstance(value, bool) and bool in args:
            return False
        return any(_boolean_for_a_number(a, value) for a in args)
    if origin in (list, tuple, set, frozenset) and isinstance(value, list | tuple):
        return any(_boolean_for_a_number(args[0], v) for v in value) if args else False
    if origin in (dict, Mapping) and isinstance(value, dict):
        return any(_boolean_for_a_number(args[1], v) for v in value.values()) if args else False
    return annotation in (int, float) and isinstance(value, bool)


def _calendar_day(value: Any) -> Any:
    """A day as YAML reads it (a date) or as text, YYYY-MM-DD. pydantic would take a time at
    midnight with any offset ("2018-07-01T00:00+02:00") as that day, its zone dropped, and
    read a number as Unix time: both are refused."""
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    if isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        return value
    shown = value.isoformat() if isinstance(value, dt.datetime) else repr(value)
    raise ValueError(f"{shown} is not a day; give YYYY-MM-DD (UTC midnight), no time of day")


# a setting that is a calendar day (UTC midnight): ``training.observe_until``
CalendarDay = Annotated[dt.date, BeforeValidator(_calendar_day)]


class RulesSettings(FrozenSettings):
    lookback_days: int = Field(gt=0)
    repeat_visit_min_days: int = Field(ge=2)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key repeated in one mapping is an error: PyYAML keeps
    the last one, so a second `derived:` appended to a spec silently replaced the first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                repeated = key in seen
            except TypeError:  # an unhashable key: the safe loader's own error follows
                continue
            if repeated:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"the key {key!r} appears twice; merge the two into one (the second would "
                    "replace the first)",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(source: str | IO[str]) -> Any:
    """YAML text (or a text stream) as Python objects, safely; a repeated key is an error."""
    return yaml.load(source, Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects


def load_defaults(path: Path | None = None) -> dict[str, Any]:
    """The raw defaults: the shipped ``features/config/default.yaml`` or a user's copy of it."""
    if path is None:
        return copy.deepcopy(_shipped_defaults())  # callers may edit; the cache must not change
    if Path(path).is_dir():
        raise InputError(f"{path} is a folder; give the settings YAML file itself")
    with open(path, encoding="utf-8") as handle:
        try:
            loaded = load_yaml(handle)
        except yaml.YAMLError as exc:
            raise InputError(f"{path} is not valid YAML: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise InputError(f"{path} is not UTF-8 text ({exc.reason}); save it as UTF-8") from None
    if not isinstance(loaded, dict):
        raise InputError(f"{path} is not a YAML mapping of settings sections")
    return loaded


@cache
def _shipped_defaults() -> dict[str, Any]:
    text = resources.files("features").joinpath("config/default.yaml").read_text("utf-8")
    loaded = load_yaml(text)
    assert isinstance(loaded, dict)
    return loaded


def config_section(path: Path | None, name: str) -> dict[str, Any]:
    """One section of the settings file: a user's file without it is an ``InputError`` saying
    how to fix it (a partial copy of the defaults would otherwise be a KeyError)."""
    section = load_defaults(path).get(name)
    if not isinstance(section, dict):
        raise InputError(
            f"{path} has no `{name}:` section of settings; start from a copy of "
            "features/config/default.yaml and change what you need"
        )
    return dict(section)


def section_settings(
    model: type[Model],
    section: dict[str, Any],
    path: Path | None,
    name: str,
    *,
    given: Collection[str] = (),
) -> Model:
    """A section of the settings file as ``model``; its problems are one ``InputError`` naming
    the file and the section (pydantic's "settings: x: Field required" named neither), an
    unknown key first (a typo also makes the key meant missing, and only the unknown one says
    what to fix), and how to fix a missing one. ``given``: the keys a command's options or a
    source's mapping gave over the file's, said as such (the file did not give them)."""
    try:
        return model.model_validate(section)
    except ValidationError as exc:
        fix = (
            "; a settings file gives each section whole: start from a copy of "
            "features/config/default.yaml and change what you need"
            if any(e["type"] == "missing" for e in exc.errors())
            else ""
        )
        where = "the shipped settings" if path is None else str(path)
        if given:
            where = f"{where} with {', '.join(given)} given over them"
        raise InputError(f"{where}, `{name}:`: {validation_problems(exc)}{fix}") from exc


def validation_problems(error: ValidationError, shown: int = 3) -> str:
    """A validation error's first problems in one line, each as "key.path: message", an
    unknown key first: a typo in a key also makes the key meant "Field required", and only
    the unknown one says what to fix."""
    errors = sorted(error.errors(), key=lambda e: e["type"] != "extra_forbidden")
    listed = [
        f"{'.'.join(str(part) for part in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
        for e in errors[:shown]
    ]
    more = f" (and {len(errors) - shown} more)" if len(errors) > shown else ""
    return "; ".join(listed) + more


def load_rules_settings(path: Path | None = None) -> RulesSettings:
    return section_settings(RulesSettings, config_section(path, "rules"), path, "rules")


def parse_yaml_model(
    text: str, model: type[Model], *, origin: str, error: type[InputError]
) -> Model:
    """Parse YAML text into a settings model; every problem becomes one ``error`` whose message
    names the file and, per problem, the key path to fix (pydantic's own text is long)."""
    try:
        loaded = load_yaml(text)
    except yaml.YAMLError as exc:
        # the parser calls the text "<unicode string>": name the file instead
        shown = str(exc).replace('"<unicode string>"', f'"{origin}"')
        raise error(f"{origin} is not valid YAML: {shown}") from exc
    if not isinstance(loaded, dict):
        raise error(f"{origin} is not a YAML mapping of keys")
    try:
        return model.model_validate(loaded)
    except ValidationError as exc:
        problems = "; ".join(_problem(e, loaded, model) for e in exc.errors())
        raise error(f"{origin} is invalid: {problems}") from exc


def _problem(problem: Any, loaded: Any, model: type[BaseModel]) -> str:
    """One validation problem: the key path, the entry it is in when that entry has a name
    (``aggregates[5]`` alone makes the reader count entries), and the message; an unknown key
    comes with the keys that are known there."""
    location = tuple(problem["loc"])
    message = str(problem["msg"]).removeprefix("Value error, ")
    if problem["type"] == "extra_forbidden":
        known = _keys_at(model, location[:-1])
        if known:
            message += f"; the keys here are {', '.join(known)}"
    if problem["type"] == "string_type" and isinstance(problem.get("input"), bool | int | float):
        # `values: {yes: true}` or `{1: purchase}`: YAML made the key a boolean or a number
        kind = "a boolean" if isinstance(problem["input"], bool) else "a number"
        message += (
            f"; YAML read {problem['input']!r} as {kind} (unquoted yes, no, on, off, true, "
            'false and digits are not text in YAML): quote it, e.g. "yes" or "1"'
        )
    if location[-1:] == ("[key]",):  # a mapping's key: pydantic's location numbers it
        location = location[:-2]
        message = f"the key {problem.get('input')!r}: {message}"
    named = _entry_name(loaded, location)
    where = f"`{_key_path(location)}`" + (f" (in '{named}')" if named else "")
    return f"{where}: {message}"


def _key_path(location: tuple[int | str, ...]) -> str:
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top level)"


def _entry_name(loaded: Any, location: tuple[int | str, ...]) -> str | None:
    """The ``name`` of the innermost list entry on ``location`` that has one, as written."""
    named = None
    for part in location:
        if isinstance(loaded, dict) and part in loaded:
            loaded = loaded[part]
        elif isinstance(loaded, list) and isinstance(part, int) and 0 <= part < len(loaded):
            loaded = loaded[part]
            name = loaded.get("name") if isinstance(loaded, dict) else None
            named = name if isinstance(name, str) else named
        else:
            break
    return named


def _keys_at(model: type[BaseModel], location: tuple[int | str, ...]) -> list[str]:
    """The keys the settings model accepts at ``location`` (empty when that is no model)."""
    current: Any = model
    for part in location:
        if isinstance(part, int):  # an entry of a list: the model found for the list's items
            continue
        fields = getattr(current, "model_fields", None)
        if not isinstance(fields, dict) or part not in fields:
            return []
        current = _model_in(fields[part].annotation)
    fields = getattr(current, "model_fields", None)
    return list(fields) if isinstance(fields, dict) else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The settings model an annotation holds (itself, or inside a list, a union, ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in get_args(annotation):
        found = _model_in(argument)
        if found is not None:
            return found
    return None
