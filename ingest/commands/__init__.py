"""Command-line front ends (`ingest <command>`): argument parsing and output for people; the
work itself lives in the role packages."""
