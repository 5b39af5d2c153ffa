-- skot-milter on one PostgreSQL database shared by several gateway nodes: roles and rights.
--
-- Run as the database owner AFTER the schema exists (`skot-milter audit migrate` with the
-- owner's URL), in the gateway's database:
--     psql -v ON_ERROR_STOP=1 -d skot -f deploy/postgres/roles.sql
-- then give each role a password (\password skot_node1) or a client certificate.
--
-- Edit the names first: one role per gateway node, named after nothing secret; the chain a
-- node may write is its `[gateway] node` (here 'node1' and 'node2'). A third node is one
-- more copy of the node1 block with its own role and chain name.
--
-- What it buys: a node (or whoever steals its password) can add records to its own chain
-- only; it can neither change nor delete a record (no UPDATE/DELETE on records at all, and
-- the append-only trigger on top), nor write into another node's chain. The owner role
-- (used for `audit migrate` and `audit purge`, not by the running nodes) keeps every right.

BEGIN;

-- The settings that matter for "durable before 250": never acknowledge a commit before
-- the WAL is on disk (the gateway also sets this on every connection). With a standby,
-- set synchronous_standby_names in postgresql.conf so that 'on' also waits for the standby.
DO $$ BEGIN
    EXECUTE format('ALTER DATABASE %I SET synchronous_commit = on', current_database());
END $$;

CREATE ROLE skot_node1 LOGIN;
CREATE ROLE skot_node2 LOGIN;
CREATE ROLE skot_web LOGIN;      -- the auditors' web view (its own [gateway] node = 'web')
CREATE ROLE skot_reader LOGIN;   -- read only: `audit verify`, reports, exports by SQL

-- Everyone may read what verification and the views read.
GRANT USAGE ON SCHEMA public TO skot_node1, skot_node2, skot_web, skot_reader;
GRANT SELECT ON schema_version, records, chain_heads, checkpoints
    TO skot_node1, skot_node2, skot_web, skot_reader;
-- The web view's search indexes (filled by a trigger that runs as the owner).
GRANT SELECT ON record_rules, record_people, record_addresses, record_subjects, record_hours
    TO skot_node1, skot_node2, skot_web, skot_reader;

-- Writers of a chain: INSERT on records (never UPDATE or DELETE), their own chain head.
GRANT INSERT ON records TO skot_node1, skot_node2, skot_web;
GRANT USAGE ON SEQUENCE records_id_seq TO skot_node1, skot_node2, skot_web;
GRANT INSERT, UPDATE ON chain_heads TO skot_node1, skot_node2, skot_web;
-- Nodes sign checkpoints of their chain; the shared quarantine and notice limits.
GRANT INSERT ON checkpoints TO skot_node1, skot_node2;
GRANT SELECT, INSERT, UPDATE, DELETE ON quarantine TO skot_node1, skot_node2;
GRANT SELECT, INSERT, DELETE ON notice_sent TO skot_node1, skot_node2;
GRANT SELECT, INSERT, UPDATE, DELETE ON notice_held TO skot_node1, skot_node2;
-- The web view lists, releases and deletes held messages; it never holds one.
GRANT SELECT, UPDATE, DELETE ON quarantine TO skot_web;

-- Each writer only in its own chain (row-level security; the owner is not bound by it).
ALTER TABLE records ENABLE ROW LEVEL SECURITY;
ALTER TABLE chain_heads ENABLE ROW LEVEL SECURITY;
CREATE POLICY everyone_reads ON records FOR SELECT USING (true);
CREATE POLICY everyone_reads ON chain_heads FOR SELECT USING (true);

CREATE POLICY node1_appends ON records FOR INSERT TO skot_node1 WITH CHECK (chain = 'node1');
CREATE POLICY node1_head_new ON chain_heads FOR INSERT TO skot_node1 WITH CHECK (chain = 'node1');
CREATE POLICY node1_head ON chain_heads FOR UPDATE TO skot_node1
    USING (chain = 'node1') WITH CHECK (chain = 'node1');

CREATE POLICY node2_appends ON records FOR INSERT TO skot_node2 WITH CHECK (chain = 'node2');
CREATE POLICY node2_head_new ON chain_heads FOR INSERT TO skot_node2 WITH CHECK (chain = 'node2');
CREATE POLICY node2_head ON chain_heads FOR UPDATE TO skot_node2
    USING (chain = 'node2') WITH CHECK (chain = 'node2');

CREATE POLICY web_appends ON records FOR INSERT TO skot_web WITH CHECK (chain = 'web');
CREATE POLICY web_head_new ON chain_heads FOR INSERT TO skot_web WITH CHECK (chain = 'web');
CREATE POLICY web_head ON chain_heads FOR UPDATE TO skot_web
    USING (chain = 'web') WITH CHECK (chain = 'web');

COMMIT;
