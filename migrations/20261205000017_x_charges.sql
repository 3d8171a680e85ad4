-- What X bills. Since X moved to pay-per-use, every event it delivers is
-- charged by event type, once per UTC day however often it is delivered
-- that day. The consumer counts per UTC day (of receipt) and billed event
-- type (`aaa_events::billing::billed_type`, XAA's type for AAA envelopes too):
--   stored           first copies: billed;
--   again_same_day   copies of an event first stored the same UTC day: X
--                    dedupes them, so they are free (retries, most replays);
--   again_later_day  copies of an event first stored on an earlier day
--                    (replays across midnight): billed again.
-- The committer adds each batch's counts before it commits the batch's
-- offsets; a consumer that dies in between reads those records again and
-- counts them as copies (an overestimate of copies, never of first copies).
CREATE TABLE x_deliveries_daily (
    day             date   NOT NULL,
    event_type      text   NOT NULL,
    stored          bigint NOT NULL DEFAULT 0,
    again_same_day  bigint NOT NULL DEFAULT 0,
    again_later_day bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (day, event_type)
);

-- Prices are configuration (`AAA_X_PRICES` on the watermark, which writes
-- them here at start); a type without a row is not priced.
CREATE TABLE x_prices (
    event_type text        PRIMARY KEY,
    usd        numeric     NOT NULL CHECK (usd >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Billable events and their estimated cost per UTC day and event type, and
-- next to them the copies the pipeline absorbed (what retries and replays
-- cost: `duplicates_billed` of them were charged again).
CREATE VIEW v_x_charges_daily AS
SELECT d.day, d.event_type,
       d.stored + d.again_later_day                              AS billable,
       d.again_same_day + d.again_later_day                      AS duplicates_absorbed,
       d.again_later_day                                         AS duplicates_billed,
       p.usd                                                     AS usd_per_event,
       (d.stored + d.again_later_day) * coalesce(p.usd, 0)       AS estimated_usd
FROM x_deliveries_daily d
LEFT JOIN x_prices p USING (event_type);

GRANT SELECT, INSERT, UPDATE ON x_deliveries_daily TO aaa_consumer;
GRANT SELECT, INSERT, UPDATE, DELETE ON x_prices TO aaa_watermark;
GRANT SELECT ON x_deliveries_daily, v_x_charges_daily TO aaa_watermark;
GRANT SELECT ON x_deliveries_daily, x_prices, v_x_charges_daily TO aaa_reader;
