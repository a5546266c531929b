-- cumi_voicemail_messages_received_total{msg_type,priority}: messages first seen by a
-- NEW_MESSAGE event, once each whatever the duplicates
SELECT msg_type, priority, count(*) AS messages
FROM messages
WHERE first_seen = 'new'
GROUP BY msg_type, priority
ORDER BY msg_type, priority;
