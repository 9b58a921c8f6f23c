"""A tiny name -> factory registry, one per extension point (backbones, features, datasets).

Modelled on timm's ``models/_registry.py``: registration is explicit, happens when the defining
module is imported, and a duplicate name is an error rather than a silent override.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects (usually factories) for one extension point.

    Args:
        kind: What is registered, used in error messages ("backbone", "feature", ...).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name`` (and optional aliases)."""

        def decorator(obj: T) -> T:
            self.add(name, obj, aliases=aliases)
            return obj

        return decorator

    def add(self, name: str, obj: T, *, aliases: tuple[str, ...] = ()) -> None:
        """Registers ``obj`` under ``name``; raises on a name or alias already taken."""
        for key in (name, *aliases):
            if key in self._entries or key in self._aliases:
                raise ValueError(f"{self.kind} {key!r} is already registered")
        self._entries[name] = obj
        for alias in aliases:
            self._aliases[alias] = name

    def canonical(self, name: str) -> str:
        """Returns the registered name for ``name`` or an alias; raises ``KeyError`` otherwise."""
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        known = sorted([*self._entries, *self._aliases])
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown {self.kind} {name!r}; registered: {', '.join(known)}.{hint}")

    def get(self, name: str) -> T:
        """Returns the object registered under ``name`` or one of its aliases."""
        return self._entries[self.canonical(name)]

    def names(self) -> list[str]:
        """Registered names in registration order (aliases excluded)."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._entries or name in self._aliases)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
