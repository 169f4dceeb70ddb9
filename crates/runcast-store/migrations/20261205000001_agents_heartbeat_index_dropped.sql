-- No query reads agents by `last_heartbeat_at` (the api finds silent agents in the AGENTS stream,
-- and lost agents' executions by `status = 'offline'`), yet this index made every heartbeat an
-- update that rewrites the row's index entries instead of a HOT update in place: the column
-- changes with each heartbeat.
DROP INDEX IF EXISTS agents_last_heartbeat;
