-- A sale's admission: 'open' (whoever is fastest, as before) or 'queue' (a
-- fair queue: everyone who joined before the start gets a random place,
-- later joiners queue behind in arrival order, and buyers are let in at
-- admit_per_sec from the start, each for admission_window_secs).
ALTER TABLE sales
    ADD COLUMN admission text NOT NULL DEFAULT 'open' CHECK (admission IN ('open', 'queue')),
    ADD COLUMN admit_per_sec integer NOT NULL DEFAULT 50 CHECK (admit_per_sec BETWEEN 1 AND 100000),
    ADD COLUMN admission_window_secs integer NOT NULL DEFAULT 120 CHECK (admission_window_secs > 0),
    ADD COLUMN queue_opens_at timestamptz;
