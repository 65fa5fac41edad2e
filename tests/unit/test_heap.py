"""A serving replica keeps its start-up heap out of the garbage collector's full passes."""

import asyncio
import gc
import os
import signal

from dispatcher.app import run_until_signalled
from dispatcher.db.engine import create_engine


async def test_serving_freezes_what_start_up_built() -> None:
    """Once serving, start-up objects are frozen: full collections no longer walk them."""
    gc.unfreeze()
    engine = create_engine("postgresql+asyncpg://nobody@127.0.0.1:9/none")  # never used
    serving = asyncio.create_task(run_until_signalled([], engine))
    try:
        async with asyncio.timeout(10):
            while gc.get_freeze_count() == 0:
                await asyncio.sleep(0.01)
    finally:
        os.kill(os.getpid(), signal.SIGTERM)  # the replica's own stop signal
        await serving
        gc.unfreeze()
