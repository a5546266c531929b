-- example: when do messages arrive? received messages by hour of day (UTC) and priority
SELECT hour(arrival) AS hour_utc, priority, count(*) AS messages
FROM messages
WHERE arrival IS NOT NULL
GROUP BY ALL
ORDER BY hour_utc, priority;
