"""Logging set-up for every entry point.

Modules log through ``logging.getLogger(__name__)`` with ``%s`` arguments. Log UIDs, AE titles and
database ids; never patient names or IDs.
"""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    """Send records at ``level`` and above to standard error, once per process."""
    logging.basicConfig(level=level.upper(), format=FORMAT)
    # pynetdicom logs every PDU at INFO; keep its association summaries only.
    quieter = max(logging.WARNING, logging.getLogger().level)
    logging.getLogger("pynetdicom").setLevel(quieter)
    logging.getLogger("alembic.runtime.plugins").setLevel(quieter)
