"""Exceptions raised by archgrow.

Every error says what was wrong, where (module, node, group, field) and what would be accepted,
because the person reading it usually did not write the model being analysed.
"""

from __future__ import annotations


class ArchgrowError(Exception):
    """Base class of every error archgrow raises on purpose."""


class TraceError(ArchgrowError):
    """torch.fx could not trace the model, or running the trace failed."""


class RuleError(TraceError):
    """An op or layer rule failed on a node: a bug in archgrow or in a registered rule."""


class UnknownGroupError(ArchgrowError, KeyError):
    """A group name that the graph does not contain."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class GrowthError(ArchgrowError):
    """A growth request that cannot be carried out (frozen group, bad k, bad tensor shape)."""


class SpecError(ArchgrowError, ValueError):
    """A growth spec that is invalid, alone or for the model it is bound to.

    ``problems`` holds one line per problem (file, field path, what is accepted), so a CLI can
    print them all at once instead of stopping at the first.
    """

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems) if problems else [message]


class ArgumentError(ArchgrowError, ValueError):
    """A bad argument to a public function (an unknown model or init name, a non-positive size)."""


class RegistrationError(ArchgrowError, ValueError):
    """A trigger, initializer, op or layer registration that cannot be accepted (name taken, bad rule)."""


class MeasurementError(ArchgrowError):
    """A group's activations cannot be measured (no module to hook, a forward that never reaches it)."""


class VizDependencyError(ArchgrowError, ImportError):
    """matplotlib, needed to draw pictures, is not installed (``pip install 'archgrow[viz]'``)."""
