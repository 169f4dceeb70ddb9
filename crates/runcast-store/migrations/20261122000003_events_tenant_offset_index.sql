-- Gateway replay from the history for tenant-wide channels (`executions`, `approvals`, `agents`):
-- "this tenant's events on this stream after offset N, in offset order" without filtering the
-- whole stream.
CREATE INDEX events_stream_tenant_offset ON events (stream, tenant_id, stream_offset);
