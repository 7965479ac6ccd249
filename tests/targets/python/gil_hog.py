"""An asyncio loop starved by the GIL (any CPython 3.9+): the main thread runs an event loop that
ticks every 5 ms and does nothing else, while a second thread ("hog") periodically runs one
regex search of ~200 ms. `re` does not release the GIL while it matches, so for that long the
loop thread, back from its 5 ms wait, cannot run a single bytecode: the loop stalls although
its own code is idle.

The hog prints each span it measured itself on CLOCK_MONOTONIC (the clock stallscope reports
in) and its own thread id: "hog START_NS END_NS TID". It prints "ready" once calibrated, then
hogs every ~0.7 s until killed. Usage: gil_hog.py [TARGET_MS] (default 200).
"""
import asyncio
import math
import re
import sys
import threading
import time

# Searching for a 'b' in a string of 'a's: every start position scans to the end, O(n^2) in
# one C call that never gives the GIL back.
PATTERN = re.compile(r"a*b")


def search_ms(size):
    """The fastest of three searches of `size` 'a's, in ms: the least disturbed by other load."""
    best = math.inf
    for _ in range(3):
        start = time.monotonic()
        PATTERN.search("a" * size)
        best = min(best, (time.monotonic() - start) * 1000)
    return best


def calibrate(target_ms):
    """The length of 'a's whose search takes about target_ms on this machine. Measured at its
    fastest (a busy moment during calibration would otherwise make every later hog short)."""
    size = 4000
    while True:
        elapsed_ms = search_ms(size)
        if elapsed_ms >= target_ms / 4:
            return int(size * math.sqrt(target_ms / elapsed_ms))
        size *= 2


def hog(text):
    tid = threading.get_native_id()
    while True:
        time.sleep(0.7)
        start = time.monotonic_ns()
        PATTERN.search(text)  # holds the GIL for the whole search
        end = time.monotonic_ns()
        print("hog", start, end, tid, flush=True)


async def tick():
    while True:
        await asyncio.sleep(0.005)


def main():
    target_ms = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    text = "a" * calibrate(target_ms)
    print("ready", flush=True)
    threading.Thread(target=hog, args=(text,), name="hog", daemon=True).start()
    asyncio.run(tick())


if __name__ == "__main__":
    main()
