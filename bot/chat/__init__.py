"""The chat side: from a chat message to an execution and from an execution to its replies."""
