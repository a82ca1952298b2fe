"""Growth specs: the Pydantic schema and the file loader."""

from archgrow.spec.io import as_spec, json_schema, load_spec, parse_spec
from archgrow.spec.schema import *  # noqa: F403
from archgrow.spec.schema import __all__ as _schema_all

__all__ = ["as_spec", "json_schema", "load_spec", "parse_spec", *_schema_all]
