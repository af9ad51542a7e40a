"""Run pgwire-proxy in front of a throwaway PostgreSQL until Ctrl+C (scripts/run-local.sh calls this).

    python -m pgwire_proxy.local [--port 5433] [-- extra proxy flags...]

From a pip install it runs the installed binary (the environment's bin/pgwire-proxy); in a checkout
(PYTHONPATH=python) build/pgwire-proxy; $PGWIRE_PROXY_BINARY overrides both (see find_binary()).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import List, Optional

from .cluster import ThrowawayPostgres
from .process import ProxyProcess, find_binary


def _parse(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="run-local", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "5433")),
                        help="proxy port (default: $PORT or 5433)")
    parser.add_argument("--listen-address", default="127.0.0.1")
    parser.add_argument("proxy_args", nargs="*", help="extra pgwire-proxy flags, after --")
    return parser.parse_args(argv)


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: Optional[List[str]] = None) -> int:
    args = _parse(argv)
    try:
        binary = find_binary()
    except FileNotFoundError as exc:
        print(f"run-local: {exc}", file=sys.stderr)
        return 1
    # Ctrl+C, SIGTERM and SIGHUP (a closed terminal) all clean up the same way. SIGINT is set
    # explicitly: Python leaves it ignored when started in the background by a non-interactive shell.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    signal.signal(signal.SIGHUP, _raise_keyboard_interrupt)
    postgres = ThrowawayPostgres()
    proxy: Optional[ProxyProcess] = None
    try:
        print("run-local: starting a throwaway PostgreSQL ...", file=sys.stderr, flush=True)
        postgres.start()
        print(f"run-local: PostgreSQL at {postgres.host}:{postgres.port} (data in {postgres.datadir})",
              file=sys.stderr, flush=True)
        proxy = ProxyProcess(postgres.dsn, binary=binary, extra_args=args.proxy_args, inherit_stderr=True,
                             listen_address=args.listen_address, port=args.port)
        proxy.start()
        print(f"pgwire-proxy listening on {proxy.host}:{proxy.port}, in front of PostgreSQL on port "
              f"{postgres.port}\n\nConnect with:\n\n    psql \"{proxy.dsn}\"\n\nPress Ctrl+C to stop.",
              flush=True)
        code = proxy.process.wait()
        print(f"run-local: pgwire-proxy exited with code {code}", file=sys.stderr)
        return code or 1
    except KeyboardInterrupt:
        print("\nrun-local: stopping ...", file=sys.stderr, flush=True)
        return 0
    except Exception as exc:  # startup failures: say what happened, then clean up
        print(f"run-local: {exc}", file=sys.stderr)
        return 1
    finally:
        # Ignore further Ctrl+C while cleaning up, so nothing is left behind half-stopped.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if proxy is not None:
            proxy.stop()
        postgres.stop()
        print("run-local: stopped; throwaway cluster removed", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
