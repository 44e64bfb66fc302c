"""Reading the small YAML files edgeq ships and users write (targets, data set definitions): one mapping of
known fields, every error naming the file (and the field)."""
from __future__ import annotations

from pathlib import Path

import yaml


def read_mapping(path: Path, fields: tuple[str, ...], what: str, error: type[Exception]) -> dict:
    """The file's mapping; ``error`` with one sentence when it is missing, not YAML, not a mapping, or has a
    field outside ``fields``."""
    if not path.is_file():
        raise error(f"{what} file {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise error(f"{path} is not valid YAML: {str(exc).splitlines()[0]}.") from None
    if not isinstance(data, dict):
        raise error(f"{path} must be a mapping of {what} fields ({', '.join(fields)}).")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise error(f"{path}: unknown field {unknown[0]!r} (a {what} has {', '.join(fields)}).")
    return data
