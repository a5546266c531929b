"""The reference CometD server of the conformance tests: CometD's own Java server, run locally.

Package data: pom.xml (the runtime classpath Maven gathers) and RefCometdServer.java (the main
class, compiled into the cache at fetch time). `python -m ingest.devservices.cometd fetch`
installs it (`make tools` does); `LocalCometdServer` starts and stops it.
"""

from ingest.devservices.cometd.server import LocalCometdServer, RefState

__all__ = ["LocalCometdServer", "RefState"]
