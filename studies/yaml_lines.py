"""YAML loading that remembers where every key is and refuses duplicate keys.

``load_with_lines(path)`` returns the plain data plus a map from key paths (tuples such as
``("grid", "features")``) to 1-based line numbers, so schema errors can name file, line and key.

A study file is bounded before it is built (``bnn.bounded_yaml``: size, regular file, alias
expansion), so a small file cannot expand into gigabytes ("billion laughs").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bnn.bounded_yaml import YamlBoundError, check_file, load_bounded


class StudyFileError(ValueError):
    """A study file is invalid; the message names file, line and key and what would be valid."""

    def __init__(self, path: str | Path, line: int | None, key: str | None, message: str) -> None:
        self.path, self.line, self.key = str(path), line, key
        where = f"{self.path}:{line}" if line else self.path
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


class _LineLoader(yaml.SafeLoader):
    """SafeLoader whose mappings raise on duplicate keys and record each key's line."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    mapping: dict = {}
    lines: dict = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in mapping:
            raise StudyFileError(
                loader.name, key_node.start_mark.line + 1, str(key),
                f"duplicate key (first defined on line {lines[key]})",
            )
        mapping[key] = loader.construct_object(value_node, deep=True)
        lines[key] = key_node.start_mark.line + 1
    loader.key_lines[id(mapping)] = lines
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _collect(data: Any, registry: dict[int, dict], prefix: tuple, out: dict[tuple, int]) -> None:
    if isinstance(data, dict):
        lines = registry.get(id(data), {})
        for key, value in data.items():
            path = (*prefix, str(key))
            if key in lines:
                out[path] = lines[key]
            _collect(value, registry, path, out)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            _collect(value, registry, (*prefix, str(i)), out)


def load_with_lines(path: str | Path) -> tuple[Any, dict[tuple, int]]:
    """Parses ``path``; returns (data, {key path: line}). Syntax errors name the line.

    Raises:
        StudyFileError: Not a regular text file, invalid YAML, a duplicate key, or out of the
            bounds of ``bnn.bounded_yaml``.
    """
    path = Path(path)
    try:
        check_file(path)
    except YamlBoundError as err:
        raise StudyFileError(path, err.line, None, err.detail) from None
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise StudyFileError(path, None, None, "not a text (YAML) file") from None
    except IsADirectoryError:
        raise StudyFileError(path, None, None, "is a folder, not a study file") from None
    loader = _LineLoader(text)
    loader.name = str(path)
    loader.key_lines = {}
    try:
        data = load_bounded(loader, path)
    except YamlBoundError as err:
        raise StudyFileError(path, err.line, None, err.detail) from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        raise StudyFileError(path, mark.line + 1 if mark else None, None, f"invalid YAML: {err.problem}") from None
    finally:
        loader.dispose()
    lines: dict[tuple, int] = {}
    _collect(data, loader.key_lines, (), lines)
    return data, lines


def line_of(lines: dict[tuple, int], path: tuple) -> int | None:
    """The line of ``path`` or of its closest recorded parent."""
    path = tuple(str(p) for p in path)
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return None
