-- A day's partition could not be created while the default partition held rows of that day
-- (events with an unexpected timestamp that arrived before their partition existed): PostgreSQL
-- refuses with "updated partition constraint for default partition would be violated", and the
-- schema upkeep would fail for good. Now such rows move into the new partition, which is created
-- detached, filled, then attached.
CREATE OR REPLACE FUNCTION runcast_ensure_daily_partitions(parent regclass, first_day date, days integer)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    day date;
    partition_name text;
    default_name text := format('%s_default', parent::text);
    low timestamptz;
    high timestamptz;
    stray boolean;
    created integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('runcast_partitions'));
    FOR i IN 0 .. days - 1 LOOP
        day := first_day + i;
        partition_name := format('%s_p%s', parent::text, to_char(day, 'YYYYMMDD'));
        low := day::timestamp AT TIME ZONE 'UTC';
        high := (day + 1)::timestamp AT TIME ZONE 'UTC';
        IF to_regclass(partition_name) IS NULL THEN
            stray := false;
            IF to_regclass(default_name) IS NOT NULL THEN
                EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I WHERE occurred_at >= %L AND occurred_at < %L)',
                               default_name, low, high)
                INTO stray;
            END IF;
            IF stray THEN
                EXECUTE format('CREATE TABLE %I (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                               partition_name, parent);
                EXECUTE format('WITH moved AS (DELETE FROM %I WHERE occurred_at >= %L AND occurred_at < %L RETURNING *)
                                INSERT INTO %I SELECT * FROM moved',
                               default_name, low, high, partition_name);
                EXECUTE format('ALTER TABLE %s ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                               parent, partition_name, low, high);
            ELSE
                EXECUTE format(
                    'CREATE TABLE %I PARTITION OF %s FOR VALUES FROM (%L) TO (%L)',
                    partition_name, parent, low, high);
            END IF;
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END
$$;
