"""Running the app under uvicorn: the port is taken before anything is loaded, and SIGTERM / Ctrl-C
end the server gracefully with a normal exit.

    sock = bind("127.0.0.1", 8080)        # MiceIndexError (one line) if the port is busy: nothing loaded yet
    app = create_app(Searcher.open(...))  # seconds
    serve(app, sock, limits)              # returns after SIGTERM / SIGINT, once open requests are answered

On SIGTERM or SIGINT uvicorn stops accepting connections and waits for the requests in flight;
each of them ends within its time budget (`ServeLimits.request_timeout_s`: answered, or 504), so
the wait is bounded by that budget plus a margin, after which the batch worker stops and `serve`
returns (the CLI prints "stopped" and exits 0). uvicorn re-raises the signal it caught once it is
done, which would kill the process with 143 before that line: `serve` installs its own handlers
first, so the re-raised signal lands on them.
"""

from __future__ import annotations

import signal
import socket

from mice_index.errors import MiceIndexError
from mice_index.serve.limits import ServeLimits

__all__ = ["SHUTDOWN_MARGIN_S", "bind", "serve"]

SHUTDOWN_MARGIN_S = 5.0  # beyond the request budget: the chunk in progress, writing the answers


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port (not yet listening) -> MiceIndexError naming the address and
    the reason when it cannot be (port in use, address not on this machine, no permission)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise MiceIndexError(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: restart over TIME_WAIT
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        hint = " (another server is using it: stop it or choose another --port)" if exc.errno == 98 else ""
        raise MiceIndexError(f"--host {host} --port {port}: cannot listen there: {reason}{hint}") from None
    return sock


def serve(app, sock: socket.socket, limits: ServeLimits = ServeLimits()) -> None:
    """Run `app` on the bound `sock` until SIGTERM / SIGINT; returns once it has stopped."""
    import uvicorn

    config = uvicorn.Config(app, access_log=False, log_level="warning",
                            timeout_graceful_shutdown=int(limits.request_timeout_s + SHUTDOWN_MARGIN_S + 0.999))
    server = uvicorn.Server(config)
    previous = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()


def _ignore(signum, frame) -> None:  # the signal uvicorn re-raises after its graceful shutdown
    pass
