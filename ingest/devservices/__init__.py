"""Development services the project starts itself: real Kafka, a schema registry, CometD's own
server, Kafka Connect (for the registry-mode tests). Never part of the deployed pipeline; tests,
benchmarks, the demo and `ingest broker` / `ingest registry` use them.

Shared machinery, one module per concern: `process` (a JVM by pid: spawn, watch, stop, kill;
loopback ports), `jvm` (`LocalJvm`, the one base class of a local JVM service), `maven` (fetching
a service's Java side from Maven Central once, into `$CUMI_CACHE_DIR`) and `background` (the
state file and actions behind `fetch|start|stop|status`). One subpackage per service: `kafka`,
`registry`, `cometd`, `connect`.
"""
