"""A serving replica keeps its start-up heap out of the garbage collector's full passes.

The replica runs in a child process: it stops on SIGTERM, and a SIGTERM sent to the
pytest process itself would end the whole run if the handler were not installed (yet, or
any more), besides freezing pytest's own heap.
"""

import asyncio
import signal
import sys

from dispatcher.app import GC_THRESHOLDS
from tests.waiting import wait_for

REPLICA = """
import asyncio, gc
from dispatcher.app import run_until_signalled
from dispatcher.db.engine import create_engine

engine = create_engine("postgresql+asyncpg://nobody@127.0.0.1:9/none")  # never used
asyncio.run(run_until_signalled([], engine))
print("frozen", gc.get_freeze_count(), flush=True)
print("thresholds", *gc.get_threshold(), flush=True)
"""


async def test_serving_freezes_what_start_up_built() -> None:
    """Once serving, start-up objects are frozen and the young generation is collected
    at the service's thresholds, not CPython's 700; SIGTERM then stops it cleanly."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        REPLICA,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    stdout = child.stdout
    assert stdout is not None
    output: list[bytes] = []

    async def serving() -> bool:
        line = await stdout.readline()
        if not line:
            raise AssertionError(b"the replica exited:\n" + b"".join(output))
        output.append(line)
        return b"dispatcher.serving" in line

    try:
        await wait_for(serving, "the replica to log dispatcher.serving", interval=0)
        child.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            rest, _ = await child.communicate()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    assert child.returncode == 0, b"".join(output) + rest
    (frozen,) = [line for line in rest.splitlines() if line.startswith(b"frozen ")]
    assert int(frozen.split()[1]) > 0
    (thresholds,) = [line for line in rest.splitlines() if line.startswith(b"thresh")]
    assert tuple(int(n) for n in thresholds.split()[1:]) == GC_THRESHOLDS
