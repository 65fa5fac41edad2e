"""Fixtures the channel adapter tests share (the sinks themselves: tests/conftest.py)."""

from collections.abc import AsyncIterator, Callable

import pytest

from dispatcher.channels.email import SmtpChannel
from tests.channels import Closer, smtp_channel

MakeSmtpChannel = Callable[..., SmtpChannel]


@pytest.fixture
async def closing() -> AsyncIterator[Closer]:
    """``closing(channel)``: the channel, closed after the test."""
    closer = Closer()
    yield closer
    await closer.aclose()


@pytest.fixture
def make_smtp_channel(closing: Closer) -> MakeSmtpChannel:
    """``tests.channels.smtp_channel``, closed after the test."""
    return lambda *args, **kwargs: closing(smtp_channel(*args, **kwargs))
