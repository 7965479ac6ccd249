"""A select()-based loop (waiting on a pipe that is never written) that burns 200 ms of pure-Python CPU every 5th wake-up, for checking
that CPython's native frames (built without frame pointers) unwind to main. Prints
"planted busy DURATION_NS" after each burn."""
import os
import select
import sys
import time


def burn_in_python(seconds):
    deadline = time.monotonic() + seconds
    total = 0
    while time.monotonic() < deadline:
        for i in range(2000):
            total += i * i
    return total


def main():
    # A descriptor to wait on: select() with no descriptors is a sleep, not a loop's wait.
    never_written, _keep_open = os.pipe()
    wakeups = 0
    while True:
        select.select([never_written], [], [], 0.05)
        wakeups += 1
        if wakeups % 5 == 0:
            start = time.monotonic_ns()
            burn_in_python(0.2)
            print(f"planted busy {time.monotonic_ns() - start}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
