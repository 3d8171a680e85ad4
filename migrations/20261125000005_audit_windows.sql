-- Audit windows: every closed slot of a webhook's timeline is replayed once,
-- even when heartbeats say it was covered. Coverage proves the receiver
-- accepted everything that reached it; it cannot see a delivery X gave up on
-- (or never sent) while the receiver was up. Only a replay can.
ALTER TABLE replay_windows ADD COLUMN kind text NOT NULL DEFAULT 'gap' CHECK (kind IN ('gap', 'audit'));

CREATE OR REPLACE VIEW v_gaps AS
SELECT webhook_id, window_from, window_to, state, job_id, attempts, conflicts, recovered, duplicates,
       submitted_at, reconciled_at, last_error, kind
FROM replay_windows;

-- How far each webhook's timeline has been judged. A watermark that was down
-- longer than X's 24 h resumes judging where it stopped, so what aged out
-- while it was down is marked expired (and alerted on), not skipped.
CREATE TABLE watermark_progress (
    webhook_id text        PRIMARY KEY,
    judged_to  timestamptz NOT NULL
);
GRANT SELECT ON watermark_progress TO aaa_reader;
GRANT SELECT, INSERT, UPDATE ON watermark_progress TO aaa_writer;
