"""The config file, SIGHUP reload, and the option reference that cannot drift from --help."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from pgwire_proxy.process import find_binary
from support import connect

ROOT = Path(__file__).resolve().parents[2]


def rows(conn, sql):
    return conn.execute(sql).fetchall()


def help_options() -> list:
    out = subprocess.run([str(find_binary()), "--help"], capture_output=True, text=True, check=True).stdout
    return re.findall(r"^--([a-z-]+)", out, re.M)


def test_configuration_reference_lists_every_option_of_help():
    documented = set(re.findall(r"^\| `--([a-z-]+)`(?:, `--([a-z-]+)`)?", (ROOT / "docs" / "configuration.md")
                                .read_text(), re.M))
    documented = {name for pair in documented for name in pair if name}
    options = set(help_options()) - {"daemon", "umask", "pidfile", "help", "version"}
    assert options - documented == set(), "options missing from docs/configuration.md"
    assert documented - options == set(), "docs/configuration.md documents options --help does not have"


def test_config_file_sets_options_and_the_command_line_wins(pgwire_proxy_process_factory, tmp_path):
    config = tmp_path / "proxy.properties"
    config.write_text("# limits for the test\nmax-rows = 3\ndeny.1 = ^drop\ndeny.2 = forbidden_word\n"
                      "patterns-ignore-case = true\nquery-timeout = 5s\n")
    proxy = pgwire_proxy_process_factory(config=str(config), query_timeout="7s")
    with connect(proxy) as conn:
        assert len(rows(conn, "select generate_series(1, 3)")) == 3
        with pytest.raises(errors.ProgramLimitExceeded):
            conn.execute("select generate_series(1, 4)")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("DROP TABLE nothing")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("select 'FORBIDDEN_WORD'")
        assert rows(conn, "show statement_timeout") == [("7s",)]  # the command line won


def test_ini_config_with_a_section(pgwire_proxy_process_factory, tmp_path):
    config = tmp_path / "proxy.ini"
    config.write_text("[pgwire-proxy]\nmax-rows = 2\n")
    proxy = pgwire_proxy_process_factory(config=str(config))
    with connect(proxy) as conn:
        with pytest.raises(errors.ProgramLimitExceeded):
            conn.execute("select generate_series(1, 3)")


@pytest.mark.parametrize("content, named", [("max-rowz = 3\n", "max-rowz"), ("max-rows = lots\n", "max-rows"),
                                             ("query-timeout = soon\n", "query-timeout"),
                                             ("max-rows.1 = 3\n", "max-rows.1")])
def test_unknown_keys_and_bad_values_fail_naming_the_key(pgwire_proxy_process_factory, tmp_path, content, named):
    config = tmp_path / "bad.properties"
    config.write_text(content)
    with pytest.raises(RuntimeError) as excinfo:
        pgwire_proxy_process_factory(config=str(config))
    assert named in str(excinfo.value) and "exited with code 78" in str(excinfo.value), str(excinfo.value)


def wait_for_log(proxy, pattern: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, proxy.stderr_text())
        if match:
            return match.group(0)
        time.sleep(0.02)
    raise AssertionError(f"no log line matching {pattern!r}:\n{proxy.stderr_text()}")


def test_sighup_reloads_limits_and_patterns_for_running_sessions(pgwire_proxy_process_factory, tmp_path):
    config = tmp_path / "proxy.properties"
    config.write_text("max-rows = 3\n")
    proxy = pgwire_proxy_process_factory(config=str(config))
    with connect(proxy) as conn:
        with pytest.raises(errors.ProgramLimitExceeded):
            conn.execute("select generate_series(1, 5)")
        config.write_text("max-rows = 10\ndeny = reload_probe\nmax-connections = 7\n")
        os.kill(proxy.process.pid, signal.SIGHUP)
        line = wait_for_log(proxy, r"event=reloaded .*")
        assert "changed=max-rows,deny" in line and "restart_required=max-connections" in line, line
        # The same, already open session now runs under the new limits and patterns.
        assert len(rows(conn, "select generate_series(1, 5)")) == 5
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("select 'reload_probe'")
        # A broken file changes nothing.
        config.write_text("max-rows = 1\nnot-an-option = 1\n")
        os.kill(proxy.process.pid, signal.SIGHUP)
        wait_for_log(proxy, r"event=reload_failed .*not-an-option.*")
        assert len(rows(conn, "select generate_series(1, 5)")) == 5
