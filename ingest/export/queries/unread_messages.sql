-- cumi_voicemail_unread_messages: messages in Inbox and unread per the fold, at the end of the
-- day of as_of (the latest exported state when the export ends earlier)
SELECT count(*) AS unread_messages
FROM states_at(CAST(getvariable('as_of') AS DATE))
WHERE folder = 'INBOX' AND NOT read;
