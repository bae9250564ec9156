"""Action aliases: the format grammar, the matcher index, help and confirmation."""
