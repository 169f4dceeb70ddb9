-- An execution's steps are in its `state` (protobuf), which is what every read decodes; nothing
-- read the `steps` JSON copy. Yet the persister serialized it and PostgreSQL parsed and
-- compressed it at every update of the row, and it grows with the execution (up to 1,000 steps):
-- with 20 steps per execution it was most of the read model's cost in the drain benchmark.
-- The persister no longer writes it. The column stays (with its default, '[]') so that replicas
-- of the previous release, which still write it, keep working during a rolling upgrade; a later
-- release drops it.
COMMENT ON COLUMN executions.steps IS
    'No longer written (since migration 20261205000002): an execution''s steps are in state. Kept for replicas of earlier releases; to be dropped.';
