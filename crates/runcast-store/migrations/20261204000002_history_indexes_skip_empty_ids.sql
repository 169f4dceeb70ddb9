-- The history's per-execution and per-workflow indexes leave out the events that have no execution
-- or no workflow (an empty id): every agent event (heartbeats, a steady stream per agent), and
-- every event of an execution outside any workflow. They were indexed under '' although no read
-- asks for '' (ids are never empty): each cost an index insert for nothing. In PostgreSQL alone,
-- 100,000 agent heartbeats went into the history in 1.65-1.67 s instead of 2.16-2.19 s with these
-- two indexes partial; events of executions in a workflow cost what they did.
--
-- Reads keep using them: a filter `execution_id = 'x'` implies `execution_id <> ''`.
--
-- Rebuilds both indexes on every partition, holding a lock on `events` meanwhile: on a large
-- history, run `event-persister migrate` at a quiet hour.
DROP INDEX events_execution;
CREATE INDEX events_execution ON events (tenant_id, execution_id, stream_offset) WHERE execution_id <> '';
DROP INDEX events_workflow;
CREATE INDEX events_workflow ON events (tenant_id, workflow_id, occurred_at, event_id) WHERE workflow_id <> '';
