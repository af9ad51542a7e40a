-- psql's describe commands: the catalog queries psql builds must see the same server.
SET search_path = pgwp_t, public;
CREATE TABLE items (
    id serial PRIMARY KEY,
    name text NOT NULL UNIQUE,
    price numeric(10,2) DEFAULT 0 CHECK (price >= 0),
    tags text[],
    created timestamptz DEFAULT '2020-01-01 00:00:00+00'
);
COMMENT ON TABLE items IS 'things for sale';
COMMENT ON COLUMN items.price IS 'in euros';
CREATE INDEX items_price_idx ON items (price) WHERE price > 0;
CREATE VIEW cheap AS SELECT id, name FROM items WHERE price < 10;
CREATE FUNCTION add_one(i int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT i + 1';
CREATE SEQUENCE counter START 5;
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE child (id int REFERENCES items (id) ON DELETE CASCADE, m mood);
\d
\dt
\di
\dv
\df
\ds
\dT
\dn
\l
\d items
\d+ items
\d cheap
\d+ cheap
\d child
\d counter
\d items_price_idx
\df+ add_one
\dx
\du pgwp_limited
\dp items
\d no_such_relation
