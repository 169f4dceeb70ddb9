-- Ownership and liveness of executions (DESIGN §7): the agent that runs an execution, and the time
-- by which a running execution with `heartbeat_timeout_seconds` must have had its next event. Both
-- exist so the api's sweeper finds the executions to fail with one indexed query.
ALTER TABLE executions
    ADD COLUMN agent_id text NOT NULL DEFAULT '',
    ADD COLUMN heartbeat_deadline timestamptz;

CREATE INDEX executions_owner_active ON executions (tenant_id, agent_id)
    WHERE agent_id <> '' AND status IN ('running', 'paused', 'blocked');
CREATE INDEX executions_heartbeat_deadline ON executions (heartbeat_deadline)
    WHERE heartbeat_deadline IS NOT NULL AND status = 'running';
