"""A FastAPI app whose `async def` endpoints block the worker's event loop on request (seed 000):
/block sleeps 300 ms (or ?seconds=S) in time.sleep, /cpu spins 300 ms in pure Python, /ok
answers at once. Each answer names the worker (pid) and, for planted work, the span it measured itself on
CLOCK_MONOTONIC (time.monotonic_ns), the clock stallscope reports in."""
import os
import time

from fastapi import FastAPI

app = FastAPI()


def spin_in_python(seconds):
    deadline = time.monotonic() + seconds
    total = 0
    while time.monotonic() < deadline:
        for i in range(2000):
            total += i * i
    return total


@app.get("/ok")
async def ok():
    return {"pid": os.getpid()}


@app.get("/block")
async def block(seconds: float = 0.3):
    start = time.monotonic_ns()
    time.sleep(seconds)  # the bug: a blocking call on the loop
    return {"pid": os.getpid(), "start_ns": start, "end_ns": time.monotonic_ns()}


@app.get("/cpu")
async def cpu():
    start = time.monotonic_ns()
    spin_in_python(0.3)  # the bug: CPU-bound work on the loop
    return {"pid": os.getpid(), "start_ns": start, "end_ns": time.monotonic_ns()}
