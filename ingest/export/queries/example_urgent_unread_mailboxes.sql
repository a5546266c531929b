-- example: the ten mailboxes with the most urgent messages unread at the end of as_of's day
SELECT s.mailbox_id, count(*) AS urgent_unread, min(m.arrival) AS oldest_arrival
FROM states_at(CAST(getvariable('as_of') AS DATE)) AS s
JOIN messages AS m USING (mailbox_id, message_id)
WHERE s.folder = 'INBOX' AND NOT s.read AND m.priority = 'urgent'
GROUP BY s.mailbox_id
ORDER BY urgent_unread DESC, s.mailbox_id
LIMIT 10;
