"""The planted bugs of asyncio_service.py as a FastAPI app (run it with
`python -m uvicorn fastapi_service:app --app-dir tests/targets/python`), every endpoint an
`async def`:

  GET /validate  validates a JSON body with a backtracking regex inside the async def: CPU work
                 that holds the event loop (~300 ms, or ?ms=N);
  GET /sleep     calls time.sleep on the loop (300 ms, or ?ms=N);
  GET /offload   the same validation in the loop's default executor: the loop stays free;
  GET /ok        answers at once.

The validation itself (`validate`, the compiled regex, the calibrated body) is asyncio_service's.
Each planted answer carries the span it measured itself on CLOCK_MONOTONIC (the clock stallscope
reports in) and the asyncio task that served it, as JSON:
{"start_ns": ..., "end_ns": ..., "task": <its name>, "coroutine": <its coroutine's qualname>}.
"""
import asyncio
import time

from fastapi import FastAPI

from asyncio_service import BODY, validate, validate_for

app = FastAPI()


def answer(start, end):
    task = asyncio.current_task()
    return {
        "start_ns": start,
        "end_ns": end,
        "task": task.get_name() if task is not None else None,
        "coroutine": task.get_coro().__qualname__ if task is not None else None,
    }


@app.get("/validate")
async def handle_validate(ms: int = 300):
    start = time.monotonic_ns()
    deadline = start + ms * 1_000_000
    while time.monotonic_ns() < deadline:
        validate(BODY)  # the bug: CPU-bound validation on the loop
    return answer(start, time.monotonic_ns())


@app.get("/sleep")
async def handle_sleep(ms: int = 300):
    start = time.monotonic_ns()
    time.sleep(ms / 1000)  # the bug: a blocking call on the loop
    return answer(start, time.monotonic_ns())


@app.get("/offload")
async def handle_offload(ms: int = 300):
    start = time.monotonic_ns()
    await asyncio.get_running_loop().run_in_executor(None, validate_for, ms)
    return answer(start, time.monotonic_ns())


@app.get("/ok")
async def handle_ok():
    return {"ok": True}
