-- Runcast schema: event history (partitioned by day), read models, applied offsets, dead letters.
-- Offsets are JetStream stream sequences; `stream` is the stream's base name (EXECUTIONS, LOGS,
-- AGENTS), so history and stream speak the same position.

-- Creates the daily partitions of `parent` for `days` days from `first_day` (UTC days) that do not
-- exist yet; returns how many it created. Serialized by an advisory lock, so replicas may race.
CREATE FUNCTION runcast_ensure_daily_partitions(parent regclass, first_day date, days integer)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    day date;
    partition_name text;
    created integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('runcast_partitions'));
    FOR i IN 0 .. days - 1 LOOP
        day := first_day + i;
        partition_name := format('%s_p%s', parent::text, to_char(day, 'YYYYMMDD'));
        IF to_regclass(partition_name) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF %s FOR VALUES FROM (%L) TO (%L)',
                partition_name, parent,
                day::timestamp AT TIME ZONE 'UTC',
                (day + 1)::timestamp AT TIME ZONE 'UTC');
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END
$$;

-- Every event, as published (protobuf `Event` bytes), with its offset and the columns queries filter on.
CREATE TABLE events (
    occurred_at   timestamptz NOT NULL,
    event_id      uuid        NOT NULL,
    stream        text        NOT NULL,
    stream_offset bigint      NOT NULL,
    tenant_id     text        NOT NULL,
    execution_id  text        NOT NULL DEFAULT '',
    agent_id      text        NOT NULL DEFAULT '',
    workflow_id   text        NOT NULL DEFAULT '',
    event_type    text        NOT NULL,
    version       bigint      NOT NULL,
    body          bytea       NOT NULL,
    PRIMARY KEY (occurred_at, event_id)
) PARTITION BY RANGE (occurred_at);

-- Catches events outside the prepared days (e.g. a replay of old events) instead of failing them.
CREATE TABLE events_default PARTITION OF events DEFAULT;

-- Resume from an offset (gateway replay older than the stream holds).
CREATE INDEX events_stream_offset ON events (stream, stream_offset);
-- ListEvents: per execution, per workflow, per type, over a time range, keyset on (occurred_at, event_id).
CREATE INDEX events_execution ON events (tenant_id, execution_id, stream_offset);
CREATE INDEX events_workflow ON events (tenant_id, workflow_id, occurred_at, event_id);
CREATE INDEX events_type ON events (tenant_id, event_type, occurred_at, event_id);
CREATE INDEX events_tenant_time ON events (tenant_id, occurred_at, event_id);

-- Log lines, partitioned like the history (shorter retention).
CREATE TABLE log_lines (
    occurred_at   timestamptz NOT NULL,
    tenant_id     text        NOT NULL,
    execution_id  text        NOT NULL,
    line_number   bigint      NOT NULL,
    stream_offset bigint      NOT NULL,
    log_stream    text        NOT NULL DEFAULT 'stdout',
    text          text        NOT NULL,
    PRIMARY KEY (occurred_at, tenant_id, execution_id, line_number)
) PARTITION BY RANGE (occurred_at);

CREATE TABLE log_lines_default PARTITION OF log_lines DEFAULT;
CREATE INDEX log_lines_execution ON log_lines (tenant_id, execution_id, line_number);

-- Read model: the state of every execution after its last applied event. `state` is the protobuf
-- `Execution` returned by Get/List; the other columns exist to filter and sort.
CREATE TABLE executions (
    tenant_id       text        NOT NULL,
    execution_id    text        NOT NULL,
    workflow_id     text        NOT NULL,
    status          text        NOT NULL,
    version         bigint      NOT NULL,
    last_offset     bigint      NOT NULL,
    progress        smallint    NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    current_step    text        NOT NULL DEFAULT '',
    steps           jsonb       NOT NULL DEFAULT '[]',
    approvals       jsonb       NOT NULL DEFAULT '[]',
    labels          jsonb       NOT NULL DEFAULT '{}',
    error           text        NOT NULL DEFAULT '',
    idempotency_key text,
    state           bytea       NOT NULL,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    started_at      timestamptz,
    finished_at     timestamptz,
    PRIMARY KEY (tenant_id, execution_id)
);

CREATE INDEX executions_recent ON executions (tenant_id, created_at DESC, execution_id DESC);
CREATE INDEX executions_workflow ON executions (tenant_id, workflow_id, created_at DESC, execution_id DESC);
CREATE INDEX executions_status ON executions (tenant_id, status, created_at DESC, execution_id DESC);
CREATE UNIQUE INDEX executions_idempotency_key ON executions (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Approvals, one row each, so the expiry sweeper finds pending ones past their deadline cheaply.
CREATE TABLE approvals (
    tenant_id    text        NOT NULL,
    execution_id text        NOT NULL,
    approval_id  text        NOT NULL,
    status       text        NOT NULL,
    reason       text        NOT NULL DEFAULT '',
    deadline     timestamptz,
    requested_at timestamptz NOT NULL,
    resolved_at  timestamptz,
    comment      text        NOT NULL DEFAULT '',
    version      bigint      NOT NULL,
    PRIMARY KEY (tenant_id, execution_id, approval_id),
    FOREIGN KEY (tenant_id, execution_id) REFERENCES executions ON DELETE CASCADE
);

CREATE INDEX approvals_pending_deadline ON approvals (deadline) WHERE status = 'pending';

-- Read model of agents.
CREATE TABLE agents (
    tenant_id         text             NOT NULL,
    agent_id          text             NOT NULL,
    status            text             NOT NULL,
    cpu_percent       double precision NOT NULL DEFAULT 0,
    memory_percent    double precision NOT NULL DEFAULT 0,
    gpu_percent       double precision NOT NULL DEFAULT 0,
    running_execution_ids text[]       NOT NULL DEFAULT '{}',
    labels            jsonb            NOT NULL DEFAULT '{}',
    timeout_seconds   integer          NOT NULL,
    version           bigint           NOT NULL,
    last_offset       bigint           NOT NULL,
    state             bytea            NOT NULL,
    last_heartbeat_at timestamptz      NOT NULL,
    online_since      timestamptz,
    PRIMARY KEY (tenant_id, agent_id)
);

CREATE INDEX agents_status ON agents (tenant_id, status, agent_id);
CREATE INDEX agents_last_heartbeat ON agents (last_heartbeat_at) WHERE status <> 'offline';

-- The offset up to which a stream is reflected in the tables above (the `as_of_offset` low
-- watermark): advanced in the same transaction as the rows it covers.
CREATE TABLE applied_offsets (
    stream         text        PRIMARY KEY,
    applied_offset bigint      NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Messages that cannot be decoded or break the contract: kept with everything needed to look at
-- them, and out of the way of the stream.
CREATE TABLE dead_letters (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream        text        NOT NULL,
    subject       text        NOT NULL,
    stream_offset bigint      NOT NULL,
    raw           bytea       NOT NULL,
    headers       jsonb       NOT NULL DEFAULT '{}',
    error         text        NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (stream, stream_offset)
);

SELECT runcast_ensure_daily_partitions('events', (now() AT TIME ZONE 'UTC')::date - 1, 9);
SELECT runcast_ensure_daily_partitions('log_lines', (now() AT TIME ZONE 'UTC')::date - 1, 9);
