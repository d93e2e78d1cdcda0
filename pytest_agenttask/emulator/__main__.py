"""``python -m pytest_agenttask.emulator``: run the Clerk emulator until interrupted.

It prints, one per line and shell-friendly, where it listens and how to use it::

    CLERK_API_URL=http://127.0.0.1:8123/v1
    CLERK_FRONTEND_API_URL=http://127.0.0.1:8124
    CLERK_SECRET_KEY=sk_test_...
    CLERK_USER_ID=user_...
    CLERK_REDIRECT_URL=http://localhost:8124/__emulator/signed-in

The secret key is the emulator's own throwaway key, printed on purpose.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from ._emulator import ClerkEmulator


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_agenttask.emulator",
        description="Run Clerk's Agent Task endpoints on loopback until Ctrl-C or SIGTERM.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="Backend API port (0: any free)")
    parser.add_argument(
        "--frontend-port", type=int, default=0, help="Frontend API port (0: any free)"
    )
    parser.add_argument("--secret-key", help="the sk_test_ key to accept (default: random)")
    parser.add_argument(
        "--rate-limit", action="store_true", help="enforce 100 Backend API requests per 10 s"
    )
    parser.add_argument(
        "--session-token-lifetime",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long session tokens are valid (default: 60, as Clerk's)",
    )
    parser.add_argument(
        "--latency",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="seconds added to every request, one round trip to the real service (default: 0)",
    )
    parser.add_argument(
        "--connect-cost",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="seconds added to the first request of each new connection, "
        "TCP and TLS set-up (default: 0)",
    )
    parser.add_argument(
        "--domain",
        action="append",
        default=[],
        dest="domains",
        help="an extra instance domain for redirect URLs (repeatable)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator; returns the exit status."""
    args = _parser().parse_args(argv)
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    try:
        emulator = ClerkEmulator(
            secret_key=args.secret_key,
            host=args.host,
            port=args.port,
            frontend_port=args.frontend_port,
            rate_limit=args.rate_limit,
            domains=args.domains,
            session_token_lifetime=args.session_token_lifetime,
            latency=args.latency,
            connect_cost=args.connect_cost,
        )
    except (TypeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        emulator.start()
    except ImportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"error: cannot listen on {args.host}: {error}", file=sys.stderr)
        return 1
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"CLERK_API_URL={emulator.api_url}")
        print(f"CLERK_FRONTEND_API_URL={emulator.frontend_api_url}")
        print(f"CLERK_SECRET_KEY={emulator.secret_key}")
        print(f"CLERK_USER_ID={emulator.default_user_id}")
        print(f"CLERK_REDIRECT_URL={emulator.default_redirect_url}", flush=True)
        network = ""
        if emulator.latency or emulator.connect_cost:
            network = (
                f" (latency {emulator.latency:g} s per request, "
                f"{emulator.connect_cost:g} s per new connection)"
            )
        print(f"Clerk emulator running{network}; Ctrl-C to stop.", file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        emulator.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
