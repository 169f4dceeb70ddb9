-- Identifiers, names and statuses compare byte by byte (COLLATE "C"), whatever locale the database
-- was created with.
--
-- Managed PostgreSQL services create databases in a linguistic locale (en_US.UTF-8) by default. A
-- text column then sorts with the C library's collation rules, which
-- - cost every index insert and lookup on these columns a locale-aware comparison (the history's
--   inserts into its five text-keyed indexes took 12-17 % longer in en_US.UTF-8 than in C, same
--   rows, same indexes), and
-- - tie the order of every index on them to the C library's version: an operating-system upgrade
--   that changes the collation (glibc 2.28 did) silently corrupts those indexes until REINDEX.
-- None of these columns holds prose; nothing sorts them for people. Free text (log lines, errors,
-- comments, reasons, step names) keeps the database's collation.
--
-- Only the collation changes, so no table is rewritten, but every index on these columns is
-- rebuilt (the history's included), holding a lock on each table meanwhile: on a large history,
-- run `event-persister migrate` at a quiet hour.
ALTER TABLE executions
    ALTER COLUMN tenant_id TYPE text COLLATE "C",
    ALTER COLUMN execution_id TYPE text COLLATE "C",
    ALTER COLUMN workflow_id TYPE text COLLATE "C",
    ALTER COLUMN status TYPE text COLLATE "C",
    ALTER COLUMN idempotency_key TYPE text COLLATE "C",
    ALTER COLUMN agent_id TYPE text COLLATE "C";

ALTER TABLE approvals
    ALTER COLUMN tenant_id TYPE text COLLATE "C",
    ALTER COLUMN execution_id TYPE text COLLATE "C",
    ALTER COLUMN approval_id TYPE text COLLATE "C",
    ALTER COLUMN status TYPE text COLLATE "C";

ALTER TABLE agents
    ALTER COLUMN tenant_id TYPE text COLLATE "C",
    ALTER COLUMN agent_id TYPE text COLLATE "C",
    ALTER COLUMN status TYPE text COLLATE "C",
    ALTER COLUMN running_execution_ids TYPE text[] COLLATE "C";

ALTER TABLE events
    ALTER COLUMN stream TYPE text COLLATE "C",
    ALTER COLUMN tenant_id TYPE text COLLATE "C",
    ALTER COLUMN execution_id TYPE text COLLATE "C",
    ALTER COLUMN agent_id TYPE text COLLATE "C",
    ALTER COLUMN workflow_id TYPE text COLLATE "C",
    ALTER COLUMN event_type TYPE text COLLATE "C";

ALTER TABLE log_lines
    ALTER COLUMN tenant_id TYPE text COLLATE "C",
    ALTER COLUMN execution_id TYPE text COLLATE "C";

ALTER TABLE applied_offsets
    ALTER COLUMN stream TYPE text COLLATE "C";

ALTER TABLE dead_letters
    ALTER COLUMN stream TYPE text COLLATE "C",
    ALTER COLUMN subject TYPE text COLLATE "C";
