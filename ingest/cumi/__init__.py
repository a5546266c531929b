"""The CUMI source: REST, the CometD session, subscriptions, gap repair, credentials, and the
normalizer that turns raw Comet JSON into domain events (docs/design.md)."""
