-- cumi_voicemail_oldest_unread_age_seconds: for each mailbox with an unread Inbox message, the
-- age at as_of of its oldest unread message; cumulative buckets (le = +Inf: every mailbox whose
-- age is known). A mailbox with an unread message of unknown arrival is not here but in
-- unread_unknown_age_mailboxes (its oldest may be that one).
WITH unread AS (
    SELECT s.mailbox_id, m.arrival
    FROM states_at(CAST(getvariable('as_of') AS DATE)) AS s
    LEFT JOIN messages AS m USING (mailbox_id, message_id)
    WHERE s.folder = 'INBOX' AND NOT s.read
), mailboxes AS (
    SELECT mailbox_id, epoch(getvariable('as_of')) - epoch(min(arrival)) AS age
    FROM unread
    GROUP BY mailbox_id
    HAVING bool_and(arrival IS NOT NULL)
)
SELECT le, (SELECT count(*) FROM mailboxes WHERE age <= le) AS mailboxes
FROM age_buckets
ORDER BY le;
