"""Running the real psql for the e2e tests, with an environment that makes its output reproducible."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Dict, Iterable, Optional, Sequence

_PID = re.compile(rb"(received from server process with PID )\d+")


def psql_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """No PG* variables from the caller, a UTF-8 locale (psql derives client_encoding from it), no pager."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k not in ("PAGER", "PSQL_PAGER")}
    env.update({"LC_ALL": "C.UTF-8", "LANG": "C.UTF-8", "PAGER": "", "PSQLRC": os.devnull})
    env.update(extra or {})
    return env


def run_psql(dsn: str, *, file: Optional[str] = None, commands: Sequence[str] = (),
             env: Optional[Dict[str, str]] = None, input: Optional[bytes] = None,
             extra_args: Iterable[str] = (), timeout: float = 120) -> subprocess.CompletedProcess:
    """psql -X with ON_ERROR_STOP=0 and VERBOSITY=verbose; stdout and stderr in one stream.

    stdbuf makes stdout line-buffered, so where stderr lines fall among stdout lines depends only on
    what psql printed, not on when its buffer happened to fill.
    """
    argv = ["psql", "-X", "-v", "ON_ERROR_STOP=0", "-v", "VERBOSITY=verbose", "-P", "pager=off",
            *extra_args, "-d", dsn]
    if file is not None:
        argv += ["-f", file]
    for command in commands:
        argv += ["-c", command]
    if shutil.which("stdbuf"):
        argv = ["stdbuf", "-oL", "-eL", *argv]
    return subprocess.run(argv, input=input if input is not None else b"", stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, env=psql_env(env), timeout=timeout)


def normalise(output: bytes) -> bytes:
    """Backend PIDs are the only thing allowed to differ between a direct and a proxied session."""
    return _PID.sub(rb"\1<pid>", output)
