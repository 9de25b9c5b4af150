"""Calls into the index that never take a reader down with them.

The index is an optimisation: when a call fails (the file is busy or damaged, or a query breaks),
the run directories still answer. ``Guarded.ask`` takes the real ``Store`` method, never
its name (``index.ask(Store.phase, run_id)``), so a renamed method fails where it is called rather
than reading as a failed query. Light: the Store is only named for type checkers.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Callable, Concatenate, Iterator, ParamSpec, TypeVar

from tina_core.rundir import TinaError

if TYPE_CHECKING:
    from tina_core.store.index import Store

P = ParamSpec("P")
T = TypeVar("T")


class Guarded:
    """A Store (or none) whose calls give None instead of raising, counting and saying why."""

    def __init__(self, store: Store | None, *, warn: Callable[[str], None] | None = None) -> None:
        self.store = store
        self.warn = warn
        self.failures = 0
        self.error: str | None = None

    @property
    def available(self) -> bool:
        return self.store is not None

    def is_current(self, run_id: str, files) -> bool:
        """Has the store ingested the run as its files are now (``Store.is_current``)?"""
        return self.store is not None and self.store.is_current(run_id, files)

    def ask(self, method: Callable[Concatenate[Store, P], T], *args: P.args, **kwargs: P.kwargs) -> T | None:
        """``method(store, *args, **kwargs)``, or None when there is no store or the call failed."""
        if self.store is None:
            return None
        try:
            return method(self.store, *args, **kwargs)
        except Exception as e:  # the index is an optimisation; the run directories still answer
            self.failures += 1
            self.error = f"index: {method.__name__}: {e}"
            if self.warn is not None:
                self.warn(f"store.{method.__name__}({', '.join(map(str, args))}): {e}")
            if isinstance(e, TinaError):  # the file is busy or damaged: not again this time
                self.store = None
            return None

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """The calls inside share one connection, opened by the first that needs it."""
        with (self.store.batch() if self.store is not None else contextlib.nullcontext()):
            yield
