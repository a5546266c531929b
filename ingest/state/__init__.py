"""Folder state from the event log: the pure projection, the compacted state topic, the read API
and replay as of a past point."""
