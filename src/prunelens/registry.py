"""A tiny name → factory registry shared by datasets, models and pruning scores."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from prunelens.errors import PrunelensError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; `@registry.register("name")` adds one, `registry.get("name")` looks it up."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise PrunelensError(
                f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._items))}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
