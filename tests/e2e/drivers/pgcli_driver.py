"""pgcli (psycopg 3 underneath, plus its completion refresher on a second connection), driven in a
pseudo-terminal with pexpect as a person would type: literals instead of parameters (pgcli has none),
a 20,000-row result, a transaction, errors (pgcli's on_error = RESUME), \\d, an SQL cursor failing
mid-way, PREPARE/EXECUTE/DEALLOCATE. Its output goes to a file with `\\o FILE`, which pgcli writes
without terminal escapes: the transcript is that file, step by step. See _workload.py for the format.
"""

import hashlib
import os
import sys
import tempfile
import time

import pexpect

from _workload import args, emit

host, port, user, dbname, only = args()
BIG_SQL = "select length(repeat('x', 1048576)), md5(repeat('x', 1048576))"
STEPS = {
    "params": ["select 41::int4 + 1 as i, 'héllo wörld'::text as t, 1.50::numeric as n, true as b,"
               " date '2024-02-29' as d, 0.25::float8 as f, '\\x0001ff'::bytea as by, null::text as nul,"
               " 9007199254740993::int8 as big"],
    "rows": ["select g, md5(g::text) as m from generate_series(1, 20000) g"],
    "transaction": ["create temp table drivers_t (id int primary key, v text)", "begin",
                    "insert into drivers_t values (0, 'v0'), (1, 'v1'), (2, 'v2')",
                    "select count(*) from drivers_t", "rollback", "select count(*) as after_rollback from drivers_t",
                    "\\d drivers_t"],
    "error": ["select 1 / 0", "begin", "select 1 / 0 as in_block", "select 'in a failed transaction'", "rollback",
              "select 'still alive'"],
    "big_param": [BIG_SQL],
    "failed_cursor": ["begin", "declare drivers_c cursor for select 1 / (5000 - g) as v from generate_series(1, 10000) g",
                      "move 4000 in drivers_c", "fetch 2000 from drivers_c", "rollback", "select 'after the cursor'"],
    "close": ["prepare drivers_s (int) as select $1 * 2", "execute drivers_s (21)", "deallocate drivers_s",
              "execute drivers_s (1)", "select 'after the close'"],
}
TIMEOUT = 30

work = tempfile.mkdtemp(prefix="pgcli-driver-")
out = os.path.join(work, "out.txt")
rc = os.path.join(work, "pgclirc")
with open(rc, "w") as f:
    f.write(f"""[main]
smart_completion = False
multi_line = False
destructive_warning = off
on_error = RESUME
timing = False
show_bottom_toolbar = False
row_limit = 0
less_chatty = True
enable_pager = False
keyring = False
table_format = psql
null_string = '<null>'
log_file = {work}/log
history_file = {work}/history
""")
env = dict(os.environ, HOME=work, PAGER="cat", TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1", LANG="C.UTF-8", LC_ALL="C.UTF-8")
child = pexpect.spawn("pgcli", ["--pgclirc", rc, "--less-chatty", "--row-limit", "0", "--prompt", "PGCLI> ",
                                "-w", "-h", host, "-p", str(port), "-U", user, "-d", dbname],
                      env=env, encoding="utf-8", timeout=TIMEOUT, dimensions=(50, 400))
child.expect("PGCLI>")


def file_text() -> str:
    try:
        with open(out, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return ""


screen = []


def run_command(command: str) -> str:
    """Types the command and returns what pgcli appended to the output file for it."""
    before = len(file_text())
    # Bracketed paste: typed literally, whatever the completer would suggest.
    child.send("\x1b[200~" + command + "\x1b[201~\r")
    deadline = time.monotonic() + TIMEOUT
    last = None
    while True:
        text = file_text()[before:]
        if text.startswith(command + "\n") and text.endswith("\n\n") and text == last:
            return text[len(command) + 1:]
        if time.monotonic() > deadline:
            sys.exit(f"pgcli: no output for {command!r} after {TIMEOUT}s; the screen's end:\n"
                     f"{''.join(screen)[-3000:]!r}")
        last = text
        try:  # keep reading the screen, so that pgcli never blocks on a full terminal
            screen.append(child.read_nonblocking(65536, timeout=0.05))
        except pexpect.TIMEOUT:
            pass


child.send("\\o " + out + "\r")
child.expect("Writing to file")
for step in only:
    seen = []
    for command in STEPS[step]:
        text = run_command(command)
        lines = text.rstrip("\n").split("\n")
        if len(lines) > 50:  # the 20,000-row table: its size and a checksum
            seen.append({"lines": len(lines), "sha256": hashlib.sha256(text.encode()).hexdigest(),
                         "head": lines[:5], "tail": lines[-3:]})
        else:
            seen.append(lines)
    emit(step, seen)
child.send("\\q\r")
child.expect(pexpect.EOF)
child.close()
print("done", flush=True)
