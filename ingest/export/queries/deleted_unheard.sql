-- cumi_voicemail_deleted_unheard_total{priority}: messages moved to Deleted (or hard-deleted)
-- that had not been read by then, once each
SELECT priority, count(*) AS messages
FROM messages
WHERE deleted_unheard
GROUP BY priority
ORDER BY priority;
