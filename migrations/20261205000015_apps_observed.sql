-- An app's name and URL as of the newest message that showed them: two
-- batches written at once used to leave whichever committed last, older or
-- not. Unknown for rows stored before this (the next observation wins).
ALTER TABLE apps ADD COLUMN observed_at timestamptz;
