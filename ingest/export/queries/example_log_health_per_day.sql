-- example: what the log held each day: records by kind and by what the fold made of them
SELECT date, kind, outcome, count(DISTINCT ("partition", "offset")) AS records
FROM events
GROUP BY ALL
ORDER BY date, kind, outcome;
