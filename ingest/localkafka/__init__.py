"""The local development Kafka broker's parts; `ingest.commands.broker` puts them together.

Package data: pom.xml (the runtime classpath Maven gathers), log4j2.properties and the
server.properties template.
"""
