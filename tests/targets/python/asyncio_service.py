"""A small HTTP service on the standard library's asyncio only (any CPython 3.9+), with the two
bugs of seed 000 planted behind their own paths, and the right way next to them:

  GET /validate  validates a large JSON body with a regex *inside the async def*: CPU work that
                 holds the event loop (~300 ms, or ?ms=N);
  GET /sleep     calls time.sleep on the loop (300 ms, or ?ms=N);
  GET /offload   the same validation via loop.run_in_executor: the loop stays free;
  GET /nested    the /validate bug in a task of its own ("nested-validate") that the request's
                 task awaits: an await chain, as `python -m asyncio pstree` shows it;
  GET /ok        answers at once.

Each planted answer carries the span it measured itself on CLOCK_MONOTONIC (the clock stallscope
reports in) and the asyncio task that served it, as JSON:
{"start_ns": ..., "end_ns": ..., "task": <its name>, "coroutine": <its coroutine's qualname>}.
Usage: asyncio_service.py PORT (PORT 0 picks a free one); it prints "listening on PORT" when
ready.
"""
import asyncio
import json
import re
import sys
import time

# A naive e-mail check with nested quantifiers: backtracks exponentially on a long local part
# with no '@', the classic ReDoS shape.
EMAIL = re.compile(r"^([a-zA-Z0-9]+)+@example\.com$")


def body_of(size):
    return json.dumps({"users": [{"email": "a" * size + "!"}]})


def calibrate(target_ms):
    """The local-part length whose validation takes at least target_ms on this machine."""
    for size in range(10, 40):
        start = time.monotonic()
        validate(body_of(size))
        if (time.monotonic() - start) * 1000 >= target_ms:
            return size
    return 40


def validate(body):
    users = json.loads(body)["users"]
    return [bool(EMAIL.match(user["email"])) for user in users]


async def handle_validate(ms):
    start = time.monotonic_ns()
    deadline = start + ms * 1_000_000
    while time.monotonic_ns() < deadline:
        validate(BODY)  # the bug: CPU-bound validation on the loop
    return start, time.monotonic_ns()


async def handle_sleep(ms):
    start = time.monotonic_ns()
    time.sleep(ms / 1000)  # the bug: a blocking call on the loop
    return start, time.monotonic_ns()


def validate_for(ms):
    deadline = time.monotonic_ns() + ms * 1_000_000
    while time.monotonic_ns() < deadline:
        validate(BODY)


async def handle_offload(ms):
    start = time.monotonic_ns()
    await asyncio.get_running_loop().run_in_executor(None, validate_for, ms)
    return start, time.monotonic_ns()


async def handle_nested(ms):
    inner = asyncio.create_task(handle_validate(ms), name="nested-validate")
    start, end = await inner  # the request's task awaits the one that stalls
    return start, end, {"inner_task": inner.get_name(), "inner_coroutine": "handle_validate"}


ROUTES = {
    "/validate": handle_validate,
    "/sleep": handle_sleep,
    "/offload": handle_offload,
    "/nested": handle_nested,
}


async def serve_client(reader, writer):
    try:
        request = await reader.readline()
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
            pass
        path = request.split()[1].decode() if len(request.split()) > 1 else "/"
        path, _, query = path.partition("?")
        ms = int(query[3:]) if query.startswith("ms=") else 300
        handler = ROUTES.get(path)
        if handler is None:
            payload = {"ok": True}
        else:
            start, end, *extra = await handler(ms)
            task = asyncio.current_task()
            payload = {
                "start_ns": start,
                "end_ns": end,
                "task": task.get_name(),
                "coroutine": task.get_coro().__qualname__,
            }
            for fields in extra:
                payload.update(fields)
        body = json.dumps(payload).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        await writer.drain()
    finally:
        writer.close()


async def main(port):
    server = await asyncio.start_server(serve_client, "127.0.0.1", port)
    print("listening on", server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


BODY = body_of(calibrate(10))

if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8000))
