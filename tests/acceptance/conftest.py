"""Fixtures shared by the process-level tests."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.faults import Dispatcher, Start


@pytest.fixture
def start() -> Iterator[Start]:
    """Start `dispatcher serve`, wait until it serves; every one is killed at teardown."""
    started: list[Dispatcher] = []

    async def run(env: dict[str, str], log: Path) -> Dispatcher:
        dispatcher = Dispatcher(env, log)
        started.append(dispatcher)
        await dispatcher.wait_ready()
        return dispatcher

    yield run
    for d in started:
        d.close()
