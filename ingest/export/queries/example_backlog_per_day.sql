-- example: the unread backlog at the end of each day (every mailbox's latest state that day)
WITH days AS (SELECT DISTINCT date AS day FROM states),
latest AS (
    SELECT d.day, s.mailbox_id, max(s.date) AS date
    FROM days AS d JOIN (SELECT DISTINCT mailbox_id, date FROM states) AS s ON s.date <= d.day
    GROUP BY d.day, s.mailbox_id
)
SELECT l.day, count(st.message_id) FILTER (WHERE st.folder = 'INBOX' AND NOT st.read) AS unread,
       count(DISTINCT l.mailbox_id) FILTER (WHERE st.folder = 'INBOX' AND NOT st.read)
           AS mailboxes_with_unread
FROM latest AS l JOIN states AS st USING (mailbox_id, date)
GROUP BY l.day
ORDER BY l.day;
