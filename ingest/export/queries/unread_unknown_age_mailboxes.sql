-- cumi_voicemail_unread_unknown_age_mailboxes: mailboxes with an unread Inbox message whose
-- arrival is unknown (first seen in a snapshot or by a restatement), at the end of as_of's day
SELECT count(DISTINCT s.mailbox_id) AS mailboxes
FROM states_at(CAST(getvariable('as_of') AS DATE)) AS s
LEFT JOIN messages AS m USING (mailbox_id, message_id)
WHERE s.folder = 'INBOX' AND NOT s.read AND m.arrival IS NULL;
