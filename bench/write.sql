-- A short write transaction for `pgbench -M simple -f bench/write.sql -s SCALE`: four round trips
-- (BEGIN, UPDATE, INSERT, END) on the tables `pgbench -i` creates. Random rows, so clients rarely
-- wait on each other's row locks (unlike the built-in tpcb-like script, which serialises on branches).
\set aid random(1, 100000 * :scale)
\set bid random(1, :scale)
\set tid random(1, 10 * :scale)
\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
END;
