"""Which mailboxes are watched: the mailbox registry topic and the workers' group assignment."""
