-- The export as tables (docs/voicemail-kpis.md). Run from the export directory, or after
-- `SET file_search_path = '<export dir>'`; times are UTC (`SET TimeZone = 'UTC'`).
-- `ingest.export.sql.connect()` runs exactly this file.

-- one row per message named by a record of the events topic (events and gap-repair snapshots)
CREATE OR REPLACE VIEW events AS
SELECT * FROM read_parquet('events/*/*.parquet', hive_partitioning = true,
                           hive_types = {'date': DATE});

-- end-of-day folder states: per day, the mailboxes that had records that day
CREATE OR REPLACE VIEW states AS
SELECT * FROM read_parquet('states/*/*.parquet', hive_partitioning = true,
                           hive_types = {'date': DATE});

-- the bounded labels of the KPIs: lower-cased vendor MsgType / Priority, anything else 'other'
CREATE OR REPLACE MACRO msg_type_label(t) AS
    CASE WHEN lower(t) IN ('voice', 'fax', 'email', 'receipt') THEN lower(t) ELSE 'other' END;
CREATE OR REPLACE MACRO priority_label(p) AS
    CASE WHEN lower(p) IN ('normal', 'normal-priority') THEN 'normal'
         WHEN lower(p) IN ('urgent', 'urgent-priority') THEN 'urgent'
         ELSE 'other' END;

-- every mailbox's folder state at the end of day `d`: the rows of its latest day <= d
-- (a mailbox has rows only for days it had records); Inbox and Deleted messages only.
-- (A join, not max(date) OVER (PARTITION BY mailbox_id): DuckDB 2.0.1 computes that window
-- over the unfiltered hive partitions, ignoring `WHERE date <= d`.)
CREATE OR REPLACE MACRO states_at(d) AS TABLE
WITH latest AS (
    SELECT mailbox_id, max(date) AS date FROM states WHERE date <= d GROUP BY mailbox_id
)
SELECT s.* FROM states AS s JOIN latest USING (mailbox_id, date)
WHERE s.message_id IS NOT NULL;

-- the rows about each message in USN order: by USN; at one USN the events (NEW_MESSAGE first)
-- before a snapshot taken at that USN (it already reflects them); then by log position.
-- `point` is what "before" means between reads, Inbox placements and deletes: (USN, listing).
CREATE OR REPLACE VIEW message_records AS
SELECT *,
       kind = 'snapshot' AS from_snapshot,
       {'usn': usn, 'snapshot': kind = 'snapshot',
        'not_new': coalesce(event_type, '') <> 'NEW_MESSAGE',
        'partition': "partition", 'offset': "offset"} AS usn_order,
       {'usn': usn, 'snapshot': kind = 'snapshot'} AS point,
       coalesce(event_type IN ('SAVED_MESSAGE', 'DELETED_MESSAGE_READ'), false)
           OR (kind = 'snapshot' AND coalesce(read, false)) AS says_read
FROM events
WHERE message_id IS NOT NULL;

-- one row per message (MailboxId, bare MessageId): what the KPIs count (docs/voicemail-kpis.md;
-- `ingest kpis` computes the same, ingest/kpis/ledger.py). Every row counts, whatever the fold
-- made of it: an event logged after the snapshot that covers it is stale for the fold, but its
-- NEW_MESSAGE still tells the arrival.
CREATE OR REPLACE VIEW messages AS
WITH inbox_changes AS (  -- a DELETED_MESSAGE_DELETE with an Inbox event at its USN is an undelete
    SELECT DISTINCT mailbox_id, message_id, usn FROM message_records
    WHERE event_type IN ('NEW_MESSAGE', 'SAVED_MESSAGE', 'UNREAD_MESSAGE',
                         'DELETED_MESSAGE_UNDELETE')
), flags AS (  -- the events that say read or unread, per USN (unread wins a conflict); an
               -- undelete's Inbox event (DELETED_MESSAGE_DELETE at its USN) restores the flag
    SELECT r.mailbox_id, r.message_id, r.usn,
           bool_and(r.event_type IN ('SAVED_MESSAGE', 'DELETED_MESSAGE_READ')) AS says_read
    FROM message_records AS r
    WHERE r.event_type IN ('NEW_MESSAGE', 'SAVED_MESSAGE', 'UNREAD_MESSAGE',
                           'DELETED_MESSAGE_READ', 'DELETED_MESSAGE_UNREAD')
      AND NOT EXISTS (SELECT 1 FROM message_records AS d
                      WHERE d.mailbox_id = r.mailbox_id AND d.message_id = r.message_id
                        AND d.usn = r.usn AND d.event_type = 'DELETED_MESSAGE_DELETE')
    GROUP BY ALL
), flag_points AS (  -- positions: an event at u is 2u, a listing at S is 2S + 1
    SELECT mailbox_id, message_id, 2 * usn AS pos, says_read FROM flags
    UNION ALL
    SELECT DISTINCT mailbox_id, message_id, 2 * usn + 1, read FROM message_records
    WHERE from_snapshot
), told_later AS (
    -- a listing at S is at least as new as S: when the log knew the message unread just before
    -- S and the next event after S about its flag says read, the listing was showing that read
    SELECT l.mailbox_id, l.message_id, l.usn,
           arg_max(p.says_read, p.pos) FILTER (WHERE p.pos < 2 * l.usn + 1) = false
           AND arg_min(p.says_read, p.pos)
                   FILTER (WHERE p.pos > 2 * l.usn + 1 AND p.pos % 2 = 0) AS next_says_read
    FROM (SELECT DISTINCT mailbox_id, message_id, usn FROM message_records
          WHERE from_snapshot AND read) AS l
    JOIN flag_points AS p USING (mailbox_id, message_id)
    GROUP BY ALL
), flagged AS (
    SELECT r.*,
           r.says_read AND NOT (r.from_snapshot AND coalesce(t.next_says_read, false))
               AS counts_read,
           coalesce(r.event_type IN ('NEW_MESSAGE', 'SAVED_MESSAGE', 'UNREAD_MESSAGE',
                                     'DELETED_MESSAGE_UNDELETE'), false)
           OR (r.from_snapshot AND r.folder = 'INBOX') AS says_inbox,
           coalesce(r.event_type IN ('DELETED_MESSAGE', 'DELETED_MESSAGE_CREATE',
                                     'DELETED_MESSAGE_READ', 'DELETED_MESSAGE_UNREAD'), false)
           OR (r.event_type = 'DELETED_MESSAGE_DELETE' AND i.usn IS NULL)
           OR (r.from_snapshot AND r.folder = 'DELETED') AS says_deleted
    FROM message_records r
    LEFT JOIN inbox_changes i USING (mailbox_id, message_id, usn)
    LEFT JOIN told_later t USING (mailbox_id, message_id, usn)
), facts AS (
    SELECT mailbox_id, message_id,
           bool_or(event_type = 'NEW_MESSAGE') AS has_new,
           min(usn) FILTER (WHERE NOT from_snapshot) AS first_event_usn,
           min(usn) FILTER (WHERE from_snapshot) AS first_listing_usn,
           min(usn) AS first_usn,
           -- first(): the first row's value even when it is NULL (arg_min skips NULLs); a
           -- time the worker could not read (timestamp_read false) is unknown, not the ingest time
           first(coalesce(receive_time, CASE WHEN timestamp_read THEN "timestamp" END)
                 ORDER BY usn_order)
               FILTER (WHERE event_type = 'NEW_MESSAGE') AS new_arrival,
           arg_min(msg_type, usn_order) FILTER (WHERE msg_type IS NOT NULL) AS msg_type,
           arg_min(priority, usn_order) FILTER (WHERE priority IS NOT NULL) AS priority,
           min(usn) FILTER (WHERE counts_read) AS first_read_usn,
           min(point) FILTER (WHERE counts_read) AS read_at,
           arg_min(from_snapshot, usn_order) FILTER (WHERE counts_read) AS first_read_in_snapshot,
           first(CASE WHEN timestamp_read THEN "timestamp" END ORDER BY usn_order)
               FILTER (WHERE counts_read) AS first_read_time,
           min(point) FILTER (WHERE says_inbox) AS inbox_at
    FROM flagged
    GROUP BY mailbox_id, message_id
), deleted AS (  -- the first placement out of the Inbox after the first one in it
    SELECT f.mailbox_id, f.message_id, min(f.point) AS deleted_at
    FROM flagged AS f JOIN facts USING (mailbox_id, message_id)
    WHERE f.says_deleted AND f.point > facts.inbox_at
    GROUP BY f.mailbox_id, f.message_id
), classified AS (
    SELECT facts.*, deleted.deleted_at,
           CASE WHEN has_new THEN 'new'
                WHEN first_event_usn IS NULL OR first_listing_usn < first_event_usn
                    THEN 'snapshot'
                ELSE 'restatement' END AS first_seen,
           -- a listen is timed from a known arrival to an event's readable EventTime
           has_new AND NOT coalesce(first_read_in_snapshot, true)
               AND new_arrival IS NOT NULL AND first_read_time IS NOT NULL AS timed
    FROM facts LEFT JOIN deleted USING (mailbox_id, message_id)
)
SELECT mailbox_id, message_id,
       first_seen,       -- 'new' (a NEW_MESSAGE event), 'snapshot', 'restatement' (another event)
       first_usn,
       msg_type_label(msg_type) AS msg_type,
       priority_label(priority) AS priority,
       CASE WHEN first_seen = 'new' THEN new_arrival END AS arrival,  -- NULL: unknown
       CASE WHEN first_read_usn IS NULL THEN NULL
            WHEN timed THEN 'known'
            ELSE 'unknown' END AS first_listen,                       -- NULL: never read
       CASE WHEN timed THEN first_read_time END AS first_listen_time,
       -- (greatest() skips NULLs: only timed listens get here)
       CASE WHEN timed THEN greatest(0, epoch(first_read_time) - epoch(new_arrival))
            END AS seconds_to_first_listen,
       first_read_usn,
       deleted_at.usn AS first_delete_usn,
       deleted_at IS NOT NULL AND (read_at IS NULL OR read_at > deleted_at) AS deleted_unheard
FROM classified;

-- the buckets of the KPI histograms, in seconds (1m 5m 15m 1h 4h 12h 1d 3d 7d +Inf)
CREATE OR REPLACE VIEW age_buckets AS
SELECT * FROM (VALUES (60.0), (300.0), (900.0), (3600.0), (14400.0), (43200.0), (86400.0),
                      (259200.0), (604800.0), ('inf'::DOUBLE)) AS b(le);
