-- Which watermark replica works a webhook, until when. Replaces a session
-- advisory lock, which any role (aaa_reader included) could take to stall
-- the watermark, and which a dead node's pooled connection could hold for
-- hours. Only aaa_writer can write a lease; readers can see who holds it.
CREATE TABLE watermark_leases (
    webhook_id  text        PRIMARY KEY,
    holder      text        NOT NULL,
    acquired_at timestamptz NOT NULL,
    renewed_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL
);

GRANT SELECT ON watermark_leases TO aaa_reader;
GRANT SELECT, INSERT, UPDATE, DELETE ON watermark_leases TO aaa_writer;
