"""`from st2common import log as logging` as StackStorm packs write it."""

import logging
from logging import *  # noqa: F403  (packs use logging.getLogger, logging.DEBUG, ...)

AUDIT = 25
logging.addLevelName(AUDIT, "AUDIT")


def getLogger(name: str) -> logging.Logger:
    return logging.getLogger(name)
