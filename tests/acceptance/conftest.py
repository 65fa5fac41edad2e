"""Fixtures shared by the process-level tests."""

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.acceptance.faults import Dispatcher


@pytest.fixture
def start() -> Iterator[Callable[[dict[str, str], Path], Dispatcher]]:
    """Start `dispatcher serve`, wait until it serves; every one is killed at teardown."""
    started: list[Dispatcher] = []

    def run(env: dict[str, str], log: Path) -> Dispatcher:
        dispatcher = Dispatcher(env, log)
        started.append(dispatcher)
        dispatcher.wait_ready()
        return dispatcher

    yield run
    for d in started:
        d.close()
