"""The declaration of a stage chain as data: its nodes (:class:`NodeSpec`), the chain (:class:`ChainSpec`) and the
one error a bad declaration raises (:class:`ChainError`). :mod:`multistage.chains.dag` validates and orders a
chain; :mod:`multistage.chains.nodes` holds the node kinds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class ChainError(ValueError):
    """A chain declaration is invalid; ``key`` names the entry (``nodes.<node>.inputs``), ``message`` says why."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass(frozen=True)
class NodeSpec:
    """One node of a chain: ``kind`` models ``output`` given ``inputs``; ``options`` configure the kind;
    ``training`` holds the training-loop settings the runner reads (steps, batch_size, learning_rate, ...)."""

    name: str
    kind: str
    output: str
    inputs: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "output": self.output,
            "inputs": list(self.inputs),
            "options": dict(self.options),
            "training": dict(self.training),
        }


@dataclass(frozen=True)
class ChainSpec:
    """A named chain: its nodes in declaration order."""

    name: str
    nodes: tuple[NodeSpec, ...]

    def node(self, name: str) -> NodeSpec:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"chain {self.name!r} has no node {name!r}; its nodes: {', '.join(self.node_names)}")

    @property
    def node_names(self) -> list[str]:
        return [node.name for node in self.nodes]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "nodes": [node.as_dict() for node in self.nodes]}
