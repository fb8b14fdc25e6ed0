"""Stage chains declared as data: a small DAG of model nodes over named variables, validated and ordered.

MS-VAE models a hierarchy one sub-graph at a time: C -> Y (stage one) then (Y, Z) -> X (stage two, sec. 3.2); the
pendulum of appendix C is L -> Y0, (B, Y0) -> Y1, (Z, Y1) -> theta. A *chain* declares such a hierarchy: variables
are named arrays, one row per example (the data's own, and those a node derives after training); a node of a
``kind`` (:mod:`multistage.chains.nodes`) models its ``output`` given its ``inputs``; the declaration's types live
in :mod:`multistage.chains.spec`.

:func:`validate_chain` checks a declaration against the data's variable names and returns the training order, or
raises one :class:`ChainError` whose ``key`` names the entry (``nodes.residual.inputs``): known kinds and options;
every input a data variable or another node's output; one producer per variable; no cycle (the message lists one);
every node's training variables available when its turn comes. The order is Kahn's topological order, ties broken
by declaration order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from multistage.chains.nodes import NODE_KINDS, kind_class
from multistage.chains.spec import ChainError, ChainSpec, NodeSpec

__all__ = ["ChainError", "ChainSpec", "NodeSpec", "chain_from_mapping", "validate_chain", "with_training"]


def chain_from_mapping(name: str, nodes: Mapping[str, Mapping[str, Any]]) -> ChainSpec:
    """A :class:`ChainSpec` from the declaration's shape in params.yaml: node name -> {kind, inputs, output,
    options, training}. Structural problems (a node that is not a mapping, a missing ``kind``/``output``, an
    unknown key) raise :class:`ChainError` naming the node."""
    if not isinstance(nodes, Mapping) or not nodes:
        raise ChainError("nodes", "a chain needs at least one node (a mapping: node name -> its declaration)")
    allowed = {"kind", "inputs", "output", "options", "training"}
    specs = []
    for node_name, declaration in nodes.items():
        key = f"nodes.{node_name}"
        if not isinstance(declaration, Mapping):
            raise ChainError(key, f"must be a mapping with keys {', '.join(sorted(allowed))}")
        unknown = sorted(set(declaration) - allowed)
        if unknown:
            raise ChainError(f"{key}.{unknown[0]}", f"unknown key; allowed keys: {', '.join(sorted(allowed))}")
        for required in ("kind", "output"):
            if not declaration.get(required):
                raise ChainError(f"{key}.{required}", "is missing")
        inputs = declaration.get("inputs") or ()
        if isinstance(inputs, str) or not all(isinstance(item, str) for item in inputs):
            raise ChainError(f"{key}.inputs", f"must be a list of variable names, got {inputs!r}")
        specs.append(
            NodeSpec(
                name=str(node_name),
                kind=str(declaration["kind"]),
                output=str(declaration["output"]),
                inputs=tuple(inputs),
                options=dict(declaration.get("options") or {}),
                training=dict(declaration.get("training") or {}),
            )
        )
    return ChainSpec(name=name, nodes=tuple(specs))


def _find_cycle(remaining: list[str], consumers: Mapping[str, list[str]]) -> list[str]:
    """A cycle among ``remaining`` nodes (each has a predecessor among them), as a closed path a -> ... -> a."""
    remaining_set = set(remaining)
    predecessors = {n: [m for m in remaining if n in consumers[m]] for n in remaining}
    path, seen = [remaining[0]], {remaining[0]: 0}
    while True:
        previous = next(m for m in predecessors[path[-1]] if m in remaining_set)
        if previous in seen:
            cycle = path[seen[previous] :] + [previous]
            return list(reversed(cycle))
        seen[previous] = len(path)
        path.append(previous)


def validate_chain(spec: ChainSpec, data_variables: Iterable[str]) -> list[NodeSpec]:
    """Check ``spec`` against the data's variable names (module docstring) and return its nodes in training
    order; a problem raises :class:`ChainError` naming the entry."""
    data = list(data_variables)
    data_set = set(data)
    if not spec.nodes:
        raise ChainError("nodes", "a chain needs at least one node")
    names = [node.name for node in spec.nodes]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ChainError(f"nodes.{duplicated[0]}", "two nodes have this name")

    producer: dict[str, str] = {}
    provided: dict[str, tuple[str, ...]] = {}
    for node in spec.nodes:
        if node.kind not in NODE_KINDS:
            raise ChainError(
                f"nodes.{node.name}.kind", f"unknown kind {node.kind!r}; allowed kinds: {', '.join(NODE_KINDS)}"
            )
        kind = kind_class(node.kind)
        kind.check_declaration(node)  # options and arity; ChainError naming the option
        provided[node.name] = kind.provided_variables(node)
        for variable in provided[node.name]:
            if variable in producer:
                key = "output" if variable == node.output else "options"
                raise ChainError(
                    f"nodes.{node.name}.{key}",
                    f"variable {variable!r} is already produced by node {producer[variable]!r}; "
                    "each variable has at most one node that generates it",
                )
            producer[variable] = node.name

    consumers: dict[str, list[str]] = {name: [] for name in names}
    for node in spec.nodes:
        for variable in node.inputs:
            if variable not in data_set and variable not in producer:
                raise ChainError(
                    f"nodes.{node.name}.inputs",
                    f"unknown input {variable!r}: neither a data variable ({', '.join(data) or 'none'}) nor "
                    f"produced by a node ({', '.join(sorted(producer)) or 'none'})",
                )
            if producer.get(variable) == node.name:
                raise ChainError(
                    f"nodes.{node.name}.inputs",
                    f"cycle: node {node.name!r} takes its own output {variable!r} as an input",
                )
            if variable in producer and node.name not in consumers[producer[variable]]:
                consumers[producer[variable]].append(node.name)

    # Kahn's algorithm; ties broken by declaration order
    in_degree = {name: 0 for name in names}
    for targets in consumers.values():
        for target in targets:
            in_degree[target] += 1
    order: list[str] = []
    ready = [name for name in names if in_degree[name] == 0]
    while ready:
        current = ready.pop(0)
        order.append(current)
        for target in consumers[current]:
            in_degree[target] -= 1
            if in_degree[target] == 0:
                ready.append(target)
        ready.sort(key=names.index)
    if len(order) < len(names):
        remaining = [name for name in names if name not in order]
        cycle = _find_cycle(remaining, consumers)
        raise ChainError(f"nodes.{cycle[0]}.inputs", "cycle: " + " -> ".join(cycle))

    available = set(data_set)
    ordered = [spec.node(name) for name in order]
    for node in ordered:
        kind = kind_class(node.kind)
        for variable, key in kind.training_variables(node):
            if variable not in available:
                raise ChainError(
                    f"nodes.{node.name}.{key}",
                    f"missing {'output' if key == 'output' else 'variable'} {variable!r}: node {node.name!r} "
                    f"({node.kind}) trains on it, but it is not a data variable ({', '.join(data) or 'none'}) "
                    "nor derived by a node trained before this one",
                )
        available.update(kind.derived_variables(node))
    return ordered


def with_training(spec: ChainSpec, defaults: Mapping[str, Any]) -> ChainSpec:
    """``spec`` with each node's ``training`` filled from ``defaults`` where the node sets nothing (None)."""
    nodes = []
    for node in spec.nodes:
        own = {k: v for k, v in node.training.items() if v is not None}
        nodes.append(dataclasses.replace(node, training={**dict(defaults), **own}))
    return dataclasses.replace(spec, nodes=tuple(nodes))
