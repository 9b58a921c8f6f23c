"""YAML files read with bounds, so a small file cannot exhaust the machine.

Every YAML file a user gives (``bnn train RUN.yaml``, study files) is a regular file of at most
``MAX_FILE_BYTES`` whose document expands, with every alias (``*name``) counted at each use, to at
most ``MAX_NODES`` values, with no alias that contains itself ("billion laughs" and recursive
documents); the check runs on the composed node graph, before any Python object is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

__all__ = ["MAX_FILE_BYTES", "MAX_NODES", "YamlBoundError", "check_expansion", "check_file", "load_bounded"]

# Generous for any real file (the bundled studies are under 10 KB); bounds what reading one may cost.
MAX_FILE_BYTES = 8 * 2**20  # 10,000 spelt-out cells fit; parsing this much takes seconds, not minutes
MAX_NODES = 1_000_000


class YamlBoundError(ValueError):
    """A YAML file is out of bounds; ``line`` (1-based, or None) and ``detail`` say where and why."""

    def __init__(self, path: str | Path, line: int | None, detail: str) -> None:
        self.path, self.line, self.detail = str(path), line, detail
        super().__init__(f"{path}:{line}: {detail}" if line else f"{path}: {detail}")


def check_file(path: Path) -> None:
    """Refuses what is not a regular file (a FIFO or device would block or never end) or is
    larger than ``MAX_FILE_BYTES``; a missing path or a folder is left to the reader's message."""
    if path.exists() and not path.is_dir() and not path.is_file():
        raise YamlBoundError(path, None, "not a regular file (a pipe or device?); give a YAML file")
    if path.is_file() and path.stat().st_size > MAX_FILE_BYTES:
        raise YamlBoundError(path, None, f"{path.stat().st_size:,} bytes, more than a YAML input may have "
                                         f"({MAX_FILE_BYTES:,})")


def check_expansion(path: str | Path, root: yaml.Node | None) -> None:
    """Counts the values of a composed document with every alias expanded (each node once, its
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
                raise YamlBoundError(path, node.start_mark.line + 1,
                                     f"the document expands to more than {MAX_NODES:,} values through aliases "
                                     "(*name); write the values out or shorten them")
            continue
        if key in active:
            raise YamlBoundError(path, node.start_mark.line + 1,
                                 "an alias (*name) refers to a value that contains it; the file cannot be recursive")
        active.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size)


def load_bounded(loader: yaml.SafeLoader, path: str | Path) -> Any:
    """The document of ``loader`` (a ``SafeLoader`` on the file's text), after ``check_expansion``.

    Raises:
        YamlBoundError: Out of bounds, or nested too deeply for the parser.
        yaml.YAMLError: A syntax error (the caller names its line).
    """
    try:
        node = loader.get_single_node()
        check_expansion(path, node)
        return loader.construct_document(node) if node is not None else None
    except RecursionError:
        raise YamlBoundError(path, None, "values nested too deeply") from None
