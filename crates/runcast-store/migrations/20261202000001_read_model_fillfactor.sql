-- The read model is updated in place once per batch for every execution in it (and its approval
-- rows). With full pages (fillfactor 100) almost no update could stay on its page, so each one
-- inserted a new entry into all 8 indexes of `executions`: 4 % of 95,000 updates were HOT in the
-- drain benchmark. Room on every page lets updates that change no indexed column (progress,
-- steps, state) be HOT. Existing pages keep their fill until rewritten.
ALTER TABLE executions SET (fillfactor = 60);
ALTER TABLE approvals SET (fillfactor = 70);
ALTER TABLE agents SET (fillfactor = 70);
