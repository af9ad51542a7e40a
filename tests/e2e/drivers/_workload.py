"""What the Python driver scripts share: arguments, the transcript format, the workload's constants.

Every driver script (here and in the other languages) takes HOST PORT USER DBNAME [STEP...] and
prints one line per step, `STEP JSON`, then `done`; the steps are the same in every language (see
test_drivers.py). Nothing printed depends on the backend (no pids, no times), so a run direct and a
run through the proxy print the same lines.
"""

from __future__ import annotations

import datetime
import decimal
import hashlib
import json
import sys

STEPS = ["params", "rows", "transaction", "error", "big_param", "failed_cursor", "close"]
ROWS = 20000
BIG = "x" * 1048576
# A query that fails mid-way: rows 1..4999 are fine, row 5000 divides by zero.
FAILS_MIDWAY = "select 1 / (5000 - g) as v from generate_series(1, 10000) g"
FAILS_AT_START = "select * from drivers_no_such_table"


def args():
    host, port, user, dbname, *only = sys.argv[1:]
    return host, int(port), user, dbname, only or STEPS


def norm(value):
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (datetime.date, datetime.datetime, datetime.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return [norm(v) for v in value]
    if isinstance(value, dict):
        return {str(k): norm(v) for k, v in value.items()}
    return value


def checksum(texts) -> str:
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()


def emit(step: str, value) -> None:
    print(step, json.dumps(norm(value), sort_keys=True, ensure_ascii=False), flush=True)


def run(steps: dict, only) -> None:
    for name in only:
        steps[name]()
    print("done", flush=True)
