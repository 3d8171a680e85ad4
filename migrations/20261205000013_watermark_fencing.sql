-- One watermark acts at a time, even across a frozen pod that thaws or a
-- round longer than its lease.
--
-- The lease gets a generation (a fencing token): it goes up whenever the
-- lease changes hands, and every state change of a round is conditional on
-- the holder and generation it started with. A replica that lost the lease
-- mid-round changes nothing after that. Releasing a lease now expires it
-- instead of deleting it, so the generation is never reset.
ALTER TABLE watermark_leases ADD COLUMN generation bigint NOT NULL DEFAULT 1;

-- A window is planned once. Rows a double-planning round may have left are
-- merged first: of each set of equal windows, the one furthest along
-- (submitted, then reconciled, pending, expired; then the oldest) stays.
WITH ranked AS (
    SELECT id,
           row_number() OVER (
               PARTITION BY webhook_id, kind, window_from, window_to
               ORDER BY CASE state WHEN 'submitted' THEN 0 WHEN 'reconciled' THEN 1 WHEN 'pending' THEN 2 ELSE 3 END, id
           ) AS n
    FROM replay_windows
)
DELETE FROM replay_windows w USING ranked r WHERE w.id = r.id AND r.n > 1;

CREATE UNIQUE INDEX replay_windows_planned_once
    ON replay_windows (webhook_id, kind, window_from, window_to);

-- X's request budget is reserved atomically: a request is recorded before
-- it is sent (outcome 'sent', then X's answer), in one transaction that
-- holds the endpoint's budget row, so two replicas never both spend the
-- last request of a 15-minute window.
ALTER TABLE x_api_requests ADD COLUMN id bigserial PRIMARY KEY;
CREATE TABLE x_api_budgets (
    endpoint text PRIMARY KEY
);
GRANT SELECT ON x_api_budgets TO aaa_reader;
GRANT SELECT, INSERT, UPDATE ON x_api_budgets TO aaa_writer;
GRANT UPDATE (outcome) ON x_api_requests TO aaa_writer;
GRANT USAGE ON SEQUENCE x_api_requests_id_seq TO aaa_writer;
