"""The automation engine: packs, actions, runners, executions, datastore and storage."""
