"""The Squall application: configuration, assembly, chat dispatcher, HTTP API and CLI."""
