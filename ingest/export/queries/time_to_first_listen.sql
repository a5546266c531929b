-- cumi_voicemail_time_to_first_listen_seconds{priority}: first listen - arrival, once per
-- message whose arrival is known and whose first read is an event; cumulative buckets as in
-- Prometheus (le = +Inf is the count), plus the sum
WITH observed AS (
    SELECT priority, seconds_to_first_listen AS seconds
    FROM messages
    WHERE seconds_to_first_listen IS NOT NULL
)
SELECT priority, le, count(*) FILTER (WHERE seconds <= le) AS messages,
       sum(seconds) AS sum_seconds
FROM observed CROSS JOIN age_buckets
GROUP BY priority, le
ORDER BY priority, le;
