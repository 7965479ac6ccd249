"""The smallest WSGI app, for following gunicorn gthread workers as max_requests recycles them
(seed 001). Answers "ok PID" so the test knows which worker served each request."""
import os


def app(environ, start_response):
    body = f"ok {os.getpid()}\n".encode()
    start_response(
        "200 OK",
        [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
    )
    return [body]
