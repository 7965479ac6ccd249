"""An asyncio program with a slow start, for `stallscope record -- python3 startup_app.py`
(issue #23): ~300 ms of CPU at import time (as a big application's imports are), then a loop
of quick 10 ms sleeps with one planted 250 ms `time.sleep` inside a coroutine, then it exits.
Prints "planted sleep START_NS END_NS" (CLOCK_MONOTONIC) to stderr."""
import asyncio
import os
import sys
import time


def slow_start(seconds):
    """CPU work before the loop starts: what importing a large application costs."""
    deadline = time.monotonic() + seconds
    total = 0
    while time.monotonic() < deadline:
        for i in range(2000):
            total += i * i
    return total


slow_start(0.3)


async def main():
    for _ in range(20):
        await asyncio.sleep(0.01)
    start = time.monotonic_ns()
    time.sleep(0.25)
    end = time.monotonic_ns()
    print(f"planted sleep {start} {end}", file=sys.stderr, flush=True)
    for _ in range(20):
        await asyncio.sleep(0.01)


if __name__ == "__main__":
    asyncio.run(main())
    # Skip the interpreter's finalization: on a loaded machine its garbage collection, after
    # the loop's last wait, can itself last past the threshold (shut-down is not what this
    # program is for).
    sys.stderr.flush()
    os._exit(0)
