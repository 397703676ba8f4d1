"""Name → object registries, so the CLI, the grid and the tests enumerate what exists.

Adding a NAS algorithm, an attack, a proxy or a dataset is one module with one ``@REG.register``
line; nothing else branches on names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

from nasaudit.errors import NasauditError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of implementations of one protocol."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._uses: dict[str, tuple[str, ...]] = {}

    def register(self, name: str, *, uses: Sequence[str] = ()) -> Callable[[T], T]:
        """Register under ``name``; ``uses`` lists the profile sections the plugin reads (``a.b`` for a
        nested table), which is what a job's identity records of the profile (``runs.profile_sections``)."""

        def decorate(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            self._uses[name] = tuple(uses)
            return obj

        return decorate

    def uses(self, name: str) -> tuple[str, ...]:
        """The profile sections ``name`` reads."""
        self.get(name)
        return self._uses.get(name, ())

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise NasauditError(f"unknown {self.kind} {name!r}; choose one of: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
