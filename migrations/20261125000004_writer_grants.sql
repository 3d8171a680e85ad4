-- The watermark opens replay windows as aaa_writer. Found by running every
-- service in the tests as a login that has aaa_writer and nothing else.
GRANT INSERT ON replay_windows TO aaa_writer;
GRANT USAGE ON SEQUENCE replay_windows_id_seq TO aaa_writer;
