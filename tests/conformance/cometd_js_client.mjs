// Conformance client: the official CometD JavaScript client (npm `cometd` + `cometd-nodejs-client`)
// against the simulator. Run by tests/conformance/test_cometd_js.py.
//
// Reads one JSON object on stdin: {"url", "transport": "long-polling"|"websocket", "channels": [...],
// "expected": N, "timeoutMs": T}. Handshakes, subscribes to every channel, prints "READY" once all
// subscriptions are confirmed, then prints one line of JSON {"transport", "events": [data, ...]}
// after N events and disconnects. Exit codes: 0 ok, 2 handshake failed, 3 subscribe failed,
// 4 timeout, 5 bad input or missing packages.
//
// The packages live outside the checkout (CUMI_NODE_MODULES, installed by .ci/install-tools), so
// they are imported by absolute path rather than by bare specifier.

import { readFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

function fail(code, message) {
    writeSync(2, `${message}\n`);
    process.exit(code);
}

const modules = process.env.CUMI_NODE_MODULES;
if (!modules) {
    fail(5, "CUMI_NODE_MODULES is not set");
}
const load = (pkg, file) => import(pathToFileURL(join(modules, pkg, file)).href);
const { adapt } = await load("cometd-nodejs-client", "cometd-nodejs-client.js");
const { CometD } = await load("cometd", "cometd.js");

const config = JSON.parse(readFileSync(0, "utf8"));
const { url, transport, channels, expected, timeoutMs } = config;
if (!url || !Array.isArray(channels) || !channels.length || !(expected > 0)) {
    fail(5, `bad input: ${JSON.stringify(config)}`);
}

adapt();
const cometd = new CometD();
cometd.configure({ url, logLevel: "warn" });
for (const other of cometd.getTransportTypes()) {
    if (other !== transport) {
        cometd.unregisterTransport(other);
    }
}

const events = [];
const timer = setTimeout(
    () => fail(4, `timeout: ${events.length} of ${expected} events`),
    timeoutMs || 20000,
);

function onEvent(message) {
    events.push(message.data);
    if (events.length === expected) {
        clearTimeout(timer);
        const used = cometd.getTransport().type;
        cometd.disconnect(() => {
            // exit only once the (large) line is flushed: a pipe write may complete later
            const line = `${JSON.stringify({ transport: used, events })}\n`;
            process.stdout.write(line, () => process.exit(0));
        });
    }
}

cometd.handshake((reply) => {
    if (!reply.successful) {
        fail(2, `handshake failed: ${JSON.stringify(reply)}`);
    }
    let confirmed = 0;
    cometd.batch(() => {
        for (const channel of channels) {
            cometd.subscribe(channel, onEvent, (ack) => {
                if (!ack.successful) {
                    fail(3, `subscribe failed: ${JSON.stringify(ack)}`);
                }
                confirmed += 1;
                if (confirmed === channels.length) {
                    process.stdout.write("READY\n");
                }
            });
        }
    });
});
