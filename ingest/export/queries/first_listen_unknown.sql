-- cumi_voicemail_first_listen_unknown_total{priority}: messages read whose time to first listen
-- the log cannot tell: first seen in a snapshot or by a restatement (arrival unknown), or whose
-- first read shows only in a snapshot (read while no one listened); never counted as zero
SELECT priority, count(*) AS messages
FROM messages
WHERE first_listen = 'unknown'
GROUP BY priority
ORDER BY priority;
