"""Stage progress, reported by the flows and shown by whoever drives them (the CLI's rich display).

The flows call :func:`stage`; the CLI installs a listener. With no listener nothing is shown, so the
same flows run quietly under a Prefect worker or a test.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol


class StageListener(Protocol):
    def started(self, stage: str) -> None: ...
    def finished(self, stage: str, seconds: float, detail: str, ok: bool) -> None: ...


_listeners: list[StageListener] = []


def add_listener(listener: StageListener) -> None:
    _listeners.append(listener)


def remove_listener(listener: StageListener) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


class StageNote:
    """What a stage says about itself when it ends (shown in the closing table)."""

    def __init__(self) -> None:
        self.detail = ""


@contextmanager
def stage(name: str) -> Iterator[StageNote]:
    note = StageNote()
    for listener in list(_listeners):
        listener.started(name)
    start = time.perf_counter()
    try:
        yield note
    except BaseException as exc:
        for listener in list(_listeners):
            listener.finished(name, time.perf_counter() - start, type(exc).__name__, False)
        raise
    for listener in list(_listeners):
        listener.finished(name, time.perf_counter() - start, note.detail, True)
