-- cumi_voicemail_mailboxes_with_urgent_unread{older_than}: mailboxes having an urgent unread
-- Inbox message older than the threshold at as_of (a message of unknown arrival has no age and
-- counts for none); edit the thresholds below for other ones
WITH thresholds(older_than, seconds) AS (VALUES ('1h', 3600), ('4h', 14400), ('24h', 86400)),
urgent AS (
    SELECT s.mailbox_id, epoch(getvariable('as_of')) - epoch(m.arrival) AS age
    FROM states_at(CAST(getvariable('as_of') AS DATE)) AS s
    JOIN messages AS m USING (mailbox_id, message_id)
    WHERE s.folder = 'INBOX' AND NOT s.read AND m.priority = 'urgent' AND m.arrival IS NOT NULL
)
SELECT older_than, (SELECT count(DISTINCT mailbox_id) FROM urgent WHERE age > seconds) AS mailboxes
FROM thresholds
ORDER BY seconds;
