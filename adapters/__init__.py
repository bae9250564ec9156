"""Chat platform adapters: each turns platform events into messages and replies into calls."""
