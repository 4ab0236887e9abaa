"""Reading YAML recipes, configs and tasks with errors that name the file."""
from __future__ import annotations

from pathlib import Path

import yaml

from pathvlm.errors import PathVLMError


def read_yaml_mapping(path: str | Path, what: str = "file") -> dict:
    """A YAML file's top-level mapping (empty file: {}); clear errors for missing or invalid files."""
    p = Path(path)
    if not p.exists():
        raise PathVLMError(f"{what} not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise PathVLMError(f"{p}: not valid YAML ({e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PathVLMError(f"{p}: expected a mapping of fields at the top level")
    return data
