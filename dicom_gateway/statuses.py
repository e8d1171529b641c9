"""DIMSE status codes we send and interpret, named as in PS3.4 Annex B (Storage Service Class).

PS3.4 B.2.3 gives the C-STORE response statuses; PS3.7 C gives the general ones.
"""

from __future__ import annotations

SUCCESS = 0x0000
"""Success (PS3.7 C.1.1)."""

OUT_OF_RESOURCES = 0xA700
"""Refused: Out of Resources (PS3.4 B.2.3, A7xx). Senders retry later."""

DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
"""Error: Data Set does not match SOP Class (PS3.4 B.2.3, A9xx)."""

CANNOT_UNDERSTAND = 0xC000
"""Error: Cannot understand (PS3.4 B.2.3, Cxxx): the data set could not be parsed."""

PROCESSING_FAILURE = 0x0110
"""Failure: Processing failure (PS3.7 C.4.1): an error on our side, not the sender's."""

WARNING_STATUSES = frozenset({0x0001, 0xB000, 0xB006, 0xB007})
"""Warnings from a Storage SCP (PS3.4 B.2.3, PS3.7 C.2): the object was stored."""


def is_out_of_resources(status: int) -> bool:
    """Refused: Out of Resources (0xA7xx): the peer may take the object later."""
    return status & 0xFF00 == OUT_OF_RESOURCES


def is_stored(status: int) -> bool:
    """Whether a C-STORE response status means the peer kept the object (success or warning)."""
    return status == SUCCESS or status in WARNING_STATUSES
