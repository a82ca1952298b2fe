"""The registries of trigger and initializer kinds: a spec's ``kind`` -> its config model and rule.

A kind is one config model (Pydantic, validated from the spec file) plus one rule class (what
runs).  Built-in kinds register themselves where they are defined, exactly as a user's own do
(:func:`archgrow.register_trigger`, :func:`archgrow.register_initializer`); the spec schema's
discriminated unions and its JSON Schema are built from these registries, so a registered kind
is accepted in spec files, validated, listed in error messages and described by ``archgrow
schema`` like a built-in one.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from pydantic import BaseModel

from archgrow.errors import RegistrationError


@dataclass(frozen=True)
class Kind:
    name: str
    config: type[BaseModel]
    rule: type


@dataclass(frozen=True)
class Problem:
    """Why a kind cannot be used on a group; ``field`` (e.g. ``final_width``) is the config field at
    fault, appended to the spec location in the message."""

    message: str
    field: str | None = None


class KindRegistry(Mapping[str, type]):
    """Kinds by name, in registration order; maps a name to its rule class."""

    def __init__(self, what: str, config_base: type[BaseModel] | None = None):
        self.what = what
        self.config_base = config_base
        self._kinds: dict[str, Kind] = {}
        self._listeners: list[Callable[[], None]] = []

    def register(self, name: str, rule: type, config: type[BaseModel], *, replace: bool = False) -> None:
        if not isinstance(name, str) or not name.isidentifier():
            raise RegistrationError(f"{self.what} kind names are identifiers like 'my_trigger'; got {name!r}")
        if name in self._kinds and not replace and self._kinds[name].rule is not rule:
            raise RegistrationError(
                f"{self.what} kind '{name}' is already registered (by {_qualname(self._kinds[name].rule)}); "
                "pass replace=True to override it, or choose another name"
            )
        base = self.config_base
        if not (isinstance(config, type) and issubclass(config, base or BaseModel)):
            wanted = base.__name__ if base is not None else "pydantic.BaseModel"
            raise RegistrationError(f"{self.what} kind '{name}': config must be a subclass of {wanted}; got {config!r}")
        field = config.model_fields.get("kind")
        if field is None or typing.get_args(field.annotation) != (name,) or field.default != name:
            raise RegistrationError(
                f"{self.what} kind '{name}': {config.__name__} needs the field  kind: Literal[{name!r}] = {name!r}  "
                "(specs pick the kind by it)"
            )
        self._kinds[name] = Kind(name, config, rule)
        self._changed()

    def unregister(self, name: str) -> None:
        """Remove a kind (tests, or a plugin being unloaded)."""
        if self._kinds.pop(name, None) is not None:
            self._changed()

    def kind(self, name: str) -> Kind:
        try:
            return self._kinds[name]
        except KeyError:
            raise RegistrationError(
                f"no {self.what} kind '{name}'; registered: {', '.join(self._kinds) or '(none)'}"
            ) from None

    def configs(self) -> dict[str, type[BaseModel]]:
        return {name: k.config for name, k in self._kinds.items()}

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after every registration (the spec schema rebuilds its unions)."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    # Mapping: name -> rule class
    def __getitem__(self, name: str) -> type:
        return self._kinds[name].rule

    def __iter__(self) -> Iterator[str]:
        return iter(self._kinds)

    def __len__(self) -> int:
        return len(self._kinds)


def _qualname(obj: type) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


TRIGGERS = KindRegistry("trigger")
INITIALIZERS = KindRegistry("initializer")

__all__ = ["INITIALIZERS", "TRIGGERS", "Kind", "KindRegistry", "Problem", "RegistrationError"]
