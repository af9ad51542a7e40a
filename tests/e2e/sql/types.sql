-- SELECTs of many types: the text each type's output function produces must arrive unchanged.
SET search_path = pgwp_t, public;
SELECT 1::int2 AS i2, 2147483647::int4 AS i4, (-9223372036854775808)::int8 AS i8, 0::int AS zero;
SELECT 12345678901234567890.123456789::numeric AS big, 'NaN'::numeric AS nan, 1e-30::numeric AS tiny,
       -0.5::numeric(5,3) AS scaled;
SET extra_float_digits = 3;
SELECT 0.1::float8 AS f8, 0.1::float4 AS f4, 'Infinity'::float8 AS inf, '-Infinity'::float8 AS ninf,
       'NaN'::float8 AS nan, 1e300::float8 AS huge, 2.5e-310::float8 AS denormal,
       0.1::float8 + 0.2::float8 AS sum, 1::float4 / 3 AS third;
SET extra_float_digits = 0;
SELECT 0.1::float8 + 0.2::float8 AS sum, 1::float4 / 3 AS third;
SET extra_float_digits = -15;
SELECT pi() AS pi;
RESET extra_float_digits;
SELECT 'plain' AS t, 'ünïcödé ✓ 日本語 🐘' AS u, E'tab\there\nnew line' AS esc, '' AS empty,
       NULL AS null_text, repeat('x', 300) AS long, 'trailing   ' AS spaces;
SELECT '\x00ff10'::bytea AS hex, ''::bytea AS empty_bytea;
SET bytea_output = 'escape';
SELECT '\x00ff10415c'::bytea AS escaped;
RESET bytea_output;
SELECT '{"a": [1, 2.5, null, true], "b": {"c": "ü"}}'::json AS j,
       '{"b": 1, "a": [2, {"z": null}]}'::jsonb AS jb, 'null'::jsonb AS jnull;
SELECT ARRAY[1, 2, NULL] AS ia, ARRAY['a b', 'c,d', NULL, '"q"', ''] AS ta, '{{1,2},{3,4}}'::int[] AS m,
       ARRAY[]::int[] AS empty, '[0:1]={7,8}'::int[] AS bounded;
SET TimeZone = 'America/New_York';
SELECT timestamptz '2024-03-10 06:59:59+00' AS before_dst, timestamptz '2024-03-10 07:00:00+00' AS after_dst,
       timestamp '2000-02-29 12:34:56.789' AS ts, date '1999-12-31' AS d, time '23:59:59.999999' AS t,
       timetz '12:00+05:30' AS ttz, 'infinity'::timestamptz AS inf, date '0044-03-15 BC' AS bc;
SET TimeZone = 'UTC';
SELECT timestamptz '2024-03-10 06:59:59+00' AS utc;
SELECT interval '1 year 2 months 3 days 04:05:06.7' AS i, interval '-1 day' AS neg, interval '0' AS zero,
       interval '1000000 hours' AS big;
SELECT true AS t, false AS f, NULL::boolean AS n;
SELECT 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS id, NULL::uuid AS none;
SELECT NULL AS a, NULL::int AS b, '' AS c, ARRAY[NULL]::text[] AS d;
SELECT 'ab'::char(4) AS c, 'ab'::varchar(5) AS v, 'x'::name AS nm, 42::oid AS o, 'pg_class'::regclass AS rc,
       'int4'::regtype AS rt, point(1.5, -2) AS pt, '192.168.0.1/24'::inet AS ip, '10.0.0.0/8'::cidr AS net,
       '08:00:2b:01:02:03'::macaddr AS mac, B'1011' AS bits, int4range(1, 10) AS r, 'a & b'::tsquery AS q;
SELECT ROW(1, 'two', NULL) AS rec, (1, 2.5)::record AS rec2;
SELECT g AS n, g * g AS square, md5(g::text) AS hash FROM generate_series(1, 2000) g;
SELECT * FROM generate_series(1, 0) g;
SELECT 1 AS "Quoted ""Name""", 2 AS "ünï", 3 AS "with space";
\pset format unaligned
SELECT 1 AS a, 'x|y' AS b;
\pset format aligned
\x on
SELECT 1 AS a, 'multi
line' AS b, NULL AS c;
\x off
\pset null '(null)'
SELECT NULL AS shown_null;
\pset null ''
