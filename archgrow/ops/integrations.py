"""Rules for third-party libraries' layer types, registered only when the library is in use.

archgrow does not depend on HuggingFace transformers (or any model zoo), so their layer rules
cannot be imported with the core.  Each integration names the package it describes and the
archgrow module registering its rules; :func:`register_installed_integrations` (called by
``archgrow.trace``) imports that module once the package has been imported by the user, which it
must have been for a model of it to exist.  Nothing is imported on archgrow's behalf.
"""

from __future__ import annotations

import importlib
import sys

from archgrow.errors import RegistrationError

# package -> archgrow module registering its layer rules
INTEGRATIONS: dict[str, str] = {
    "transformers": "archgrow.ops.transformers_layers",
    "timm": "archgrow.ops.timm_layers",
}
_loaded: set[str] = set()


def register_integration(package: str, module: str) -> None:
    """When ``package`` has been imported, trace imports ``module`` (which registers the rules)."""
    if not package or not module:
        raise RegistrationError(f"register_integration needs a package and a module name; got {package!r}, {module!r}")
    INTEGRATIONS[package] = module


def register_installed_integrations() -> None:
    """Import the rule module of every integrated package the user has imported, once."""
    for package, module in INTEGRATIONS.items():
        if module not in _loaded and package in sys.modules:
            importlib.import_module(module)
            _loaded.add(module)


__all__ = ["INTEGRATIONS", "register_installed_integrations", "register_integration"]
