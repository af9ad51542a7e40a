"""Messages of many megabytes both ways: a 15 MB Query relayed whole, and a 50 MB ErrorResponse that
the proxy reads from its first bytes and streams on (it never holds it whole), seen as direct."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors

from support import connect


def test_a_fifteen_megabyte_query_is_relayed(pgwire_proxy):
    text = "x" * (15 * 1024 * 1024)
    with connect(pgwire_proxy) as conn:
        assert conn.execute(f"select length('{text}')").fetchone() == (len(text),)
        assert conn.execute("select 'after'").fetchone() == ("after",)


@pytest.mark.parametrize("size", [100_000, 50_000_000])
def test_a_huge_error_message_reaches_the_client_as_direct(pgwire_proxy, pg_upstream, size):
    sql = f"select repeat('x', {size})::int"
    seen = []
    for dsn in (pg_upstream.dsn, pgwire_proxy.dsn):
        with psycopg.connect(dsn, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
            with pytest.raises(errors.InvalidTextRepresentation) as excinfo:
                conn.execute(sql)
            diag = excinfo.value.diag
            seen.append((diag.sqlstate, diag.severity_nonlocalized, len(diag.message_primary or ""),
                         diag.message_primary[:60]))
            assert conn.execute("select 'usable'").fetchone() == ("usable",)
    assert seen[0] == seen[1]
    assert seen[1][2] > size
