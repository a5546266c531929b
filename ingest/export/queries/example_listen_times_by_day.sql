-- example: median and 90th percentile time to first listen (minutes) by arrival day and priority
SELECT CAST(arrival AS DATE) AS day, priority, count(*) AS messages,
       round(median(seconds_to_first_listen) / 60, 1) AS median_minutes,
       round(quantile_cont(seconds_to_first_listen, 0.9) / 60, 1) AS p90_minutes
FROM messages
WHERE seconds_to_first_listen IS NOT NULL
GROUP BY ALL
ORDER BY day, priority;
