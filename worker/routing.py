"""Where a study result goes: a pure function of the configuration, the result and the study.

Every destination receives the outputs it lists (SR, Secondary Capture) for every result. Each
routing rule whose conditions hold adds what it forwards (the original images, the SR, the SC) to
the destinations it names. A (destination, object) pair is sent once however many rules name it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from core.config import NodeConfig, RuleCondition


@dataclass(frozen=True, order=True)
class Route:
    destination: str
    kind: str
    """``sr``, ``sc`` or ``original``."""


def matches(
    condition: RuleCondition,
    positive: bool,
    probability: float,
    attributes: Mapping[str, str | None],
) -> bool:
    """Whether a rule's conditions all hold for this result and study."""
    if condition.positive is not None and condition.positive != positive:
        return False
    if condition.probability_at_least is not None and probability < condition.probability_at_least:
        return False
    for keyword, allowed in condition.attributes.items():
        value = attributes.get(keyword)
        if value is None or value.strip().upper() not in allowed:
            return False
    return True


def routes(
    config: NodeConfig, positive: bool, probability: float, attributes: Mapping[str, str | None]
) -> list[Route]:
    """Every (destination, kind) the result goes to, sorted."""
    planned = {
        Route(destination.name, output)
        for destination in config.destinations
        for output in destination.outputs
    }
    for rule in config.routing:
        if matches(rule.when, positive, probability, attributes):
            for what in rule.forward:
                kind = "original" if what == "originals" else what
                planned.update(Route(name, kind) for name in rule.to)
    return sorted(planned)


def routing_keywords(config: NodeConfig) -> set[str]:
    """The DICOM keywords the routing rules look at."""
    return {keyword for rule in config.routing for keyword in rule.when.attributes}
