-- cumi_voicemail_messages_first_seen_total{source}: messages first seen in a gap-repair snapshot
-- ('snapshot') or by another event than NEW_MESSAGE, e.g. the Notifier's latest status after its
-- downtime ('restatement'); their arrival is unknown, they are not in messages_received
SELECT first_seen AS source, count(*) AS messages
FROM messages
WHERE first_seen <> 'new'
GROUP BY first_seen
ORDER BY first_seen;
