"""`python -m bot.cli`, as `python -m bot.cli` ran the single-module CLI before it became a package."""

from bot.cli import main

main()
