-- During a migration from Account Activity to the X Activity API, X
-- delivers a follow, block or mute in both envelopes. The AAA copy carries
-- X's time; the XAA copy carries none (dated on arrival), so both landed in
-- relationship_events as two changes. `undated` marks changes X sent no time
-- for; the watermark's maintenance drops an undated change that repeats
-- the pair's state before it (the same change again, from the other
-- envelope, or a resend), whichever copy arrived first. `relationships`
-- (the current state) is unaffected, and `events` keeps every copy as sent.
ALTER TABLE relationship_events ADD COLUMN undated boolean NOT NULL DEFAULT false;
CREATE INDEX relationship_events_undated ON relationship_events (event_time) WHERE undated;

GRANT SELECT, DELETE ON relationship_events TO aaa_watermark;
