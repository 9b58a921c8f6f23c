"""YAML loading that remembers where every key is and refuses duplicate keys.

``load_with_lines(path)`` returns the plain data plus a map from key paths (tuples such as
``("grid", "features")``) to 1-based line numbers, so schema errors can name file, line and key.

A study file is bounded before it is built: a regular file of at most ``MAX_FILE_BYTES``, whose
document expands (aliases ``*name`` counted at every use) to at most ``MAX_NODES`` values, with no
alias that contains itself; so a small file cannot expand into gigabytes ("billion laughs").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

# Generous for any real study (the bundled ones are under 10 KB); bounds what reading one may cost.
MAX_FILE_BYTES = 128 * 2**20
MAX_NODES = 1_000_000


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


def _check_expansion(path: Path, root: yaml.Node | None) -> None:
    """Counts the values of the composed document with every alias expanded (each node once, its
    expanded size memoised), refusing more than ``MAX_NODES`` and aliases that contain themselves."""
    if root is None:
        return
    size: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in size:
            continue
        children = ([c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode)
                    else node.value if isinstance(node, yaml.SequenceNode) else [])
        if children_done:
            active.discard(key)
            size[key] = min(1 + sum(size[id(c)] for c in children), MAX_NODES + 1)
            if size[key] > MAX_NODES:
                raise StudyFileError(path, node.start_mark.line + 1, None,
                                     f"the document expands to more than {MAX_NODES:,} values through aliases "
                                     "(*name); write the values out or shorten them")
            continue
        if key in active:
            raise StudyFileError(path, node.start_mark.line + 1, None, "an alias (*name) refers to a value that "
                                 "contains it; a study file cannot be recursive")
        active.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size)


def load_with_lines(path: str | Path) -> tuple[Any, dict[tuple, int]]:
    """Parses ``path``; returns (data, {key path: line}). Syntax errors name the line.

    Raises:
        StudyFileError: Not a regular text file, larger than ``MAX_FILE_BYTES``, invalid YAML,
            a duplicate key, or a document that expands beyond ``MAX_NODES`` values.
    """
    path = Path(path)
    if path.exists() and not path.is_dir() and not path.is_file():
        raise StudyFileError(path, None, None, "not a regular file (a pipe or device?); give a YAML study file")
    if path.is_file() and path.stat().st_size > MAX_FILE_BYTES:
        raise StudyFileError(path, None, None, f"{path.stat().st_size:,} bytes, more than a study file may have "
                             f"({MAX_FILE_BYTES:,})")
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
        node = loader.get_single_node()
        _check_expansion(path, node)
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        raise StudyFileError(path, mark.line + 1 if mark else None, None, f"invalid YAML: {err.problem}") from None
    except RecursionError:
        raise StudyFileError(path, None, None, "values nested too deeply to be a study file") from None
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
