"""A Cisco Unity Connection stand-in: CUMI REST + the Jetty/CometD Bayeux server, a scenario
engine with exact ground truth, and fault injection. It never imports the pipeline's normalizer or
projection: it plays the vendor's server, emitting raw Comet JSON like the vendor's example.

Modules: `users` (credentials), `mailbox` (server state), `scenario` (activity + truth), `comet`
(the event wire format), `notifier` (publication, Notifier downtime), `bayeux` (the Bayeux server),
`rest` (REST API, throttling), `faults`, `stats`, `admin` (HTTP fault triggers), `app`
(`Simulator`), `cli`.
"""

from ingest.simulator.app import Simulator, SimulatorConfig
from ingest.simulator.faults import MalformedKind
from ingest.simulator.scenario import Op
from ingest.simulator.stats import Stats
from ingest.simulator.users import Credentials, User

__all__ = ["Credentials", "MalformedKind", "Op", "Simulator", "SimulatorConfig", "Stats", "User"]
