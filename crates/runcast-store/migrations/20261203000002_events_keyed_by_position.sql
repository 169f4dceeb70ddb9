-- `events` kept two indexes for what one key can do: a primary key on (occurred_at, event_id),
-- for idempotence (a redelivered event adds nothing), and an index on (stream, stream_offset),
-- for resumes and rebuilds. Both are maintained at every insert; the drain benchmark's
-- PostgreSQL spent about half of its time in the `events` insert and its 7 indexes.
--
-- One key by position now serves both: (stream, stream_offset) leads it; occurred_at is the
-- partition key, which the primary key of a partitioned table must hold; event_id keeps it unique
-- across epochs (a stream created anew restarts its offsets). A redelivery carries the same four
-- values, so `ON CONFLICT DO NOTHING` still adds nothing.
--
-- This rebuilds the key of every partition, holding a lock on `events` meanwhile: on a large
-- history, run `event-persister migrate` at a quiet hour.
ALTER TABLE events DROP CONSTRAINT events_pkey;
ALTER TABLE events ADD PRIMARY KEY (stream, stream_offset, occurred_at, event_id);
DROP INDEX events_stream_offset;
