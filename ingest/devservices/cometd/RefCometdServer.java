/*
 * The reference CometD server for cumi-pipeline's conformance tests: CometD's own Java server on
 * Jetty, with CometD's DEFAULT options, plus a small control hook so a test can publish events.
 *
 * Bayeux: http://HOST:PORT/vmevents/cometd, as Unity Connection serves it. Long-polling and
 * callback-polling go through CometD's servlet (Jakarta EE 10 container); WebSocket through
 * CometD's transport on Jetty's own WebSocket API. Only what a server cannot run without is set:
 * the WebSocket URL mapping and the transport list. Everything else (trustClientSession=false,
 * a 64 KiB WebSocket message limit, a 20 s long-poll hold, one message per WebSocket frame) is
 * CometD's default on purpose: the tests exist to meet the server as it is shipped.
 *
 * Control hook, outside /vmevents (JSON in, JSON out):
 *   POST /_ref/publish      {"channel": "/vmrest/mailbox/ID", "data": {...}} or a list of them,
 *                           published in order from a server-side session: {"published": N}
 *   GET  /_ref/state        {"sessions": N, "held": M, "channels": {"/vmrest/mailbox/ID": subs}}
 *                           sessions: remote sessions; held: those with a /meta/connect suspended
 *   POST /_ref/disconnect   disconnects every remote session server-side: {"disconnected": N}
 *
 * Usage: java -cp 'lib/*:classes' RefCometdServer [--host 127.0.0.1] [--port 0]
 * Prints "ref-cometd ready port=<port> ..." on stdout once both are served (port 0: any free one).
 * Compiled by ingest/devservices/cometd/runtime.py into the cache; not part of the Python package's code.
 */

import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import java.util.concurrent.ConcurrentHashMap;
import org.cometd.bayeux.Promise;
import org.cometd.bayeux.server.BayeuxServer;
import org.cometd.bayeux.server.LocalSession;
import org.cometd.bayeux.server.ServerChannel;
import org.cometd.bayeux.server.ServerMessage;
import org.cometd.bayeux.server.ServerSession;
import org.cometd.server.BayeuxServerImpl;
import org.cometd.server.http.jakarta.CometDServlet;
import org.eclipse.jetty.ee10.servlet.ServletContextHandler;
import org.eclipse.jetty.ee10.servlet.ServletHolder;
import org.eclipse.jetty.http.HttpHeader;
import org.eclipse.jetty.http.HttpStatus;
import org.eclipse.jetty.io.Content;
import org.eclipse.jetty.server.Context;
import org.eclipse.jetty.server.Handler;
import org.eclipse.jetty.server.Request;
import org.eclipse.jetty.server.Response;
import org.eclipse.jetty.server.Server;
import org.eclipse.jetty.server.ServerConnector;
import org.eclipse.jetty.server.handler.ContextHandler;
import org.eclipse.jetty.server.handler.ContextHandlerCollection;
import org.eclipse.jetty.util.Callback;
import org.eclipse.jetty.util.Jetty;
import org.eclipse.jetty.util.ajax.JSON;
import org.eclipse.jetty.websocket.server.WebSocketUpgradeHandler;

public final class RefCometdServer {
    static final String CONTEXT_PATH = "/vmevents";
    static final String COMETD_MAPPING = "/cometd/*";
    static final String TRANSPORTS = String.join(",",
            "org.cometd.server.websocket.jetty.JettyWebSocketTransport",
            "org.cometd.server.http.JSONHttpTransport",
            "org.cometd.server.http.JSONPHttpTransport");

    private RefCometdServer() {
    }

    public static void main(String[] args) throws Exception {
        String host = "127.0.0.1";
        int port = 0;
        for (int i = 0; i + 1 < args.length; i += 2) {
            switch (args[i]) {
                case "--host" -> host = args[i + 1];
                case "--port" -> port = Integer.parseInt(args[i + 1]);
                default -> throw new IllegalArgumentException("unknown option " + args[i]);
            }
        }
        Server server = new Server();
        ServerConnector connector = new ServerConnector(server);
        connector.setHost(host);
        connector.setPort(port);
        server.addConnector(connector);

        BayeuxServerImpl bayeux = new BayeuxServerImpl();
        HeldConnects held = new HeldConnects();
        bayeux.addListener(held);
        ServletContextHandler cometd = cometdContext(server, bayeux);
        ContextHandler control = new ContextHandler(new ControlHandler(bayeux, held), "/_ref");
        server.setHandler(new ContextHandlerCollection(cometd, control));
        // SIGTERM: Jetty's shutdown hook stops the server, closing every connection
        server.setStopAtShutdown(true);
        server.start();

        String cometdVersion = BayeuxServerImpl.class.getPackage().getImplementationVersion();
        System.out.printf("ref-cometd ready port=%d url=http://%s:%d%s/cometd cometd=%s jetty=%s%n",
                connector.getLocalPort(), host, connector.getLocalPort(), CONTEXT_PATH,
                cometdVersion == null ? "?" : cometdVersion, Jetty.VERSION);
        System.out.flush();
        server.join();
    }

    /** CometD's servlet at /vmevents/cometd, with WebSocket upgrades on the same path. */
    private static ServletContextHandler cometdContext(Server server, BayeuxServerImpl bayeux) {
        ServletContextHandler context = new ServletContextHandler(CONTEXT_PATH);
        // JettyWebSocketTransport finds its container through the context
        context.insertHandler(WebSocketUpgradeHandler.from(server, context));
        // the servlet adopts a BayeuxServer it finds here instead of creating its own, which lets
        // us hand it the one non-string option (the Jetty Context) the WebSocket transport needs
        bayeux.setOption(BayeuxServerImpl.TRANSPORTS_OPTION, TRANSPORTS);
        bayeux.setOption("ws.cometdURLMapping", COMETD_MAPPING);
        bayeux.setOption(Context.class.getName(), context.getContext());
        context.setAttribute(BayeuxServer.ATTRIBUTE, bayeux);
        ServletHolder holder = new ServletHolder("cometd", CometDServlet.class);
        // started with the server, so the control hook can publish before any client came
        holder.setInitOrder(1);
        holder.setAsyncSupported(true);
        context.addServlet(holder, COMETD_MAPPING);
        return context;
    }

    /**
     * Which sessions have a /meta/connect suspended right now, so a test can act while a
     * long-poll is held without guessing with a sleep. Listening changes nothing in the server.
     */
    static final class HeldConnects implements BayeuxServer.SessionListener, ServerSession.HeartBeatListener {
        final Set<String> ids = ConcurrentHashMap.newKeySet();

        @Override
        public void sessionAdded(ServerSession session, ServerMessage message) {
            session.addListener(this);
        }

        @Override
        public void sessionRemoved(ServerSession session, ServerMessage message, boolean timeout) {
            ids.remove(session.getId());
        }

        @Override
        public void onSuspended(ServerSession session, ServerMessage message, long timeout) {
            ids.add(session.getId());
        }

        @Override
        public void onResumed(ServerSession session, ServerMessage message, boolean timeout) {
            ids.remove(session.getId());
        }
    }

    /** The test-only hook: publish, show state, disconnect sessions. */
    static final class ControlHandler extends Handler.Abstract {
        private final BayeuxServerImpl bayeux;
        private final HeldConnects held;
        private LocalSession publisher;

        ControlHandler(BayeuxServerImpl bayeux, HeldConnects held) {
            this.bayeux = bayeux;
            this.held = held;
        }

        @Override
        public boolean handle(Request request, Response response, Callback callback) throws Exception {
            String path = Request.getPathInContext(request);
            String method = request.getMethod();
            Object result;
            try {
                if ("POST".equals(method) && "/publish".equals(path)) {
                    result = publish(Content.Source.asString(request, StandardCharsets.UTF_8));
                } else if ("GET".equals(method) && "/state".equals(path)) {
                    result = state();
                } else if ("POST".equals(method) && "/disconnect".equals(path)) {
                    result = disconnect();
                } else {
                    return false;
                }
            } catch (IllegalArgumentException | ClassCastException x) {
                reply(response, callback, HttpStatus.BAD_REQUEST_400, Map.of("error", String.valueOf(x)));
                return true;
            }
            reply(response, callback, HttpStatus.OK_200, result);
            return true;
        }

        private static void reply(Response response, Callback callback, int status, Object body) {
            response.setStatus(status);
            response.getHeaders().put(HttpHeader.CONTENT_TYPE, "application/json");
            Content.Sink.write(response, true, new JSON().toJSON(body), callback);
        }

        private synchronized Map<String, Object> publish(String body) {
            Object parsed = new JSON().fromJSON(body);
            List<Object> items = new ArrayList<>();
            if (parsed instanceof Object[] array) {
                items.addAll(List.of(array));
            } else {
                items.add(parsed);
            }
            ServerSession sender = publisher().getServerSession();
            for (Object item : items) {
                @SuppressWarnings("unchecked")
                Map<String, Object> message = (Map<String, Object>)item;
                Object channel = message.get("channel");
                if (!(channel instanceof String name) || !message.containsKey("data")) {
                    throw new IllegalArgumentException("each item needs \"channel\" and \"data\"");
                }
                ServerChannel target = bayeux.createChannelIfAbsent(name).getReference();
                target.publish(sender, message.get("data"), Promise.noop());
            }
            return Map.of("published", items.size());
        }

        /** One server-side session publishes everything, like the application a server runs. */
        private LocalSession publisher() {
            if (publisher == null || !publisher.isHandshook()) {
                publisher = bayeux.newLocalSession("ref-publisher");
                publisher.handshake();
            }
            return publisher;
        }

        private Map<String, Object> state() {
            Map<String, Object> channels = new TreeMap<>();
            for (ServerChannel channel : bayeux.getChannels()) {
                if (!channel.isMeta() && !channel.isService()) {
                    channels.put(channel.getId(), channel.getSubscribers().size());
                }
            }
            long sessions = bayeux.getSessions().stream().filter(s -> !s.isLocalSession()).count();
            return Map.of("sessions", sessions, "held", held.ids.size(), "channels", channels);
        }

        private Map<String, Object> disconnect() {
            int count = 0;
            for (ServerSession session : bayeux.getSessions()) {
                if (!session.isLocalSession()) {
                    session.disconnect();
                    count++;
                }
            }
            return Map.of("disconnected", count);
        }
    }
}
