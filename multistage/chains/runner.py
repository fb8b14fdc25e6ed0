"""Train a declared chain node by node, in topological order, and use the trained chain.

`train_chain` takes a `ChainSpec` and a `VariableTable` (the data's variables, one row per example, with a
train/test split), validates the declaration against the table, and for each node in order: builds it and fits
its standardisation on the training rows; trains it with the one training loop (``multistage.train.train``,
checkpoints in ``checkpoint_dir/<node>.pt``, fingerprinted by the node's declaration, the data and the upstream
nodes it reads); scores it on the test rows and adds its derived variables to the table for the nodes after it.
The result is a `TrainedChain` that generates (ancestral sampling) and infers latents; `save_chain` /
`load_chain` write and read it as one file per node plus ``chain.json``. Nothing here prints:
``callback(node, step, record)`` receives the logged values. More: docs/chains.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multistage.chains.dag import ChainSpec, NodeSpec, validate_chain
from multistage.chains.nodes import ChainNode, build_node, kind_class
from multistage.io import atomic_path
from multistage.train import LoopConfig, TrainResult, atomic_torch_save, load_tensors_file, train

NODE_FORMAT = "multistage.chain_node/1"
TRAINING_KEYS = ("steps", "batch_size", "learning_rate", "seed", "checkpoint_every", "log_every", "gradient_clip")
NodeCallback = Callable[[str, int, dict], None]


@dataclass
class VariableTable:
    """Named arrays with one row per example (``values``) and ``split`` (0 train, 1 test) of the same length."""

    values: dict[str, np.ndarray]
    split: np.ndarray

    def __post_init__(self) -> None:
        self.split = np.asarray(self.split)
        for name, array in self.values.items():
            if len(array) != len(self.split):
                raise ValueError(f"variable {name!r} has {len(array)} rows, the split {len(self.split)}")

    @property
    def names(self) -> list[str]:
        return list(self.values)

    @property
    def train_rows(self) -> np.ndarray:
        return np.flatnonzero(self.split == 0)

    @property
    def test_rows(self) -> np.ndarray:
        return np.flatnonzero(self.split == 1)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(array.shape[1:]) for name, array in self.values.items()}

    def tensors(self, names, rows: np.ndarray, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """The rows of ``names`` as tensors on ``device`` (float arrays as float32; uint8 images stay uint8)."""
        out = {}
        for name in names:
            array = np.asarray(
                self.values[name][np.sort(rows)]
                if isinstance(self.values[name], np.memmap)
                else self.values[name][rows]
            )
            if array.dtype == np.float64:
                array = array.astype(np.float32)
            out[name] = torch.from_numpy(np.ascontiguousarray(array)).to(device)
        return out


def _needed_variables(node: ChainNode) -> list[str]:
    return list(dict.fromkeys(name for name, _ in kind_class(node.spec.kind).training_variables(node.spec)))


def _digest(*parts: Any) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def loop_config(spec: NodeSpec) -> tuple[LoopConfig, float]:
    """The node's training-loop settings from ``spec.training`` (steps, batch_size, learning_rate, seed,
    checkpoint_every, log_every, gradient_clip) and its learning rate."""
    training = dict(spec.training)
    unknown = sorted(set(training) - set(TRAINING_KEYS))
    if unknown:
        raise ValueError(f"node {spec.name!r}: unknown training key(s) {unknown}; allowed: {', '.join(TRAINING_KEYS)}")
    if "steps" not in training or "batch_size" not in training:
        raise ValueError(f"node {spec.name!r}: training needs steps and batch_size")
    return LoopConfig(
        steps=int(training["steps"]),
        batch_size=int(training["batch_size"]),
        seed=int(training.get("seed", 0)),
        checkpoint_every=int(training.get("checkpoint_every", 500)),
        log_every=int(training.get("log_every", 50)),
        gradient_clip=training.get("gradient_clip"),
    ), float(training.get("learning_rate", 1e-3))


@dataclass
class NodeReport:
    """What training one node gave: the loop's result and the mean objective terms on the test rows."""

    name: str
    kind: str
    result: TrainResult
    test_logs: dict[str, float] = field(default_factory=dict)
    fingerprint: str = ""


@dataclass
class TrainedChain:
    """The trained nodes of a chain, in training (topological) order."""

    spec: ChainSpec
    nodes: dict[str, ChainNode]
    reports: dict[str, NodeReport] = field(default_factory=dict)

    @property
    def order(self) -> list[str]:
        return list(self.nodes)

    @property
    def produced(self) -> dict[str, str]:
        """Variable -> the node that generates it."""
        return {
            variable: name
            for name, node in self.nodes.items()
            for variable in kind_class(node.spec.kind).provided_variables(node.spec)
        }

    @property
    def roots(self) -> list[str]:
        """The variables generation starts from: inputs that no node generates."""
        produced = self.produced
        return list(dict.fromkeys(v for node in self.nodes.values() for v in node.spec.inputs if v not in produced))

    @torch.no_grad()
    def generate(
        self,
        values: Mapping[str, torch.Tensor],
        latents: Mapping[str, torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Ancestral sampling: the root variables in ``values`` (N rows each), every node's output mean in order;
        a node with a latent uses ``latents[node]`` or, when absent, z ~ p(z). Returns every variable."""
        latents = dict(latents or {})
        out = dict(values)
        missing = [v for v in self.roots if v not in out]
        if missing:
            raise ValueError(f"generate needs the root variables {self.roots}; missing {missing}")
        n = len(next(iter(out.values()))) if out else len(next(iter(latents.values())))
        for name, node in self.nodes.items():
            node.eval()
            latent = latents.get(name)
            if latent is None and node.latent_dim:
                latent = node.sample_latent(n, generator)
            out[node.spec.output] = node.generate({v: out[v] for v in node.spec.inputs}, latent)
        return out

    @torch.no_grad()
    def infer_latents(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The posterior mean of every latent whose node's training variables are in ``values``."""
        out = {}
        for name, node in self.nodes.items():
            if node.latent_dim and all(v in values for v in _needed_variables(node)):
                node.eval()
                out[name] = node.infer_latent(values)
        return out


def _test_logs(node: ChainNode, table: VariableTable, names: list[str], device, batch_size: int) -> dict[str, float]:
    """Mean objective terms over the test rows (each batch weighted by its size); empty without test rows."""
    rows = table.test_rows
    if not len(rows):
        return {}
    totals: dict[str, float] = {}
    node.eval()
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            _, logs = node.objective(table.tensors(names, batch, device), None)
            for key, value in logs.items():
                totals[key] = totals.get(key, 0.0) + float(value) * len(batch)
    return {key: value / len(rows) for key, value in totals.items()}


def train_chain(
    spec: ChainSpec,
    table: VariableTable,
    checkpoint_dir: str | Path,
    device: torch.device | str = "cpu",
    data_fingerprint: str = "",
    callback: NodeCallback | None = None,
    show_progress: bool = True,
    evaluation_batch_size: int = 512,
) -> TrainedChain:
    """Train every node of ``spec`` in topological order (module docstring); ``table`` gains the derived
    variables. Each node's ``training`` mapping holds its loop settings (:func:`loop_config`)."""
    device = torch.device(device)
    ordered = validate_chain(spec, table.names)
    checkpoint_dir = Path(checkpoint_dir)
    train_rows = table.train_rows
    if not len(train_rows):
        raise ValueError("the variable table has no training rows (split == 0)")
    producers: dict[str, str] = {}  # derived variable -> the fingerprint of the node that derived it
    trained: dict[str, ChainNode] = {}
    reports: dict[str, NodeReport] = {}
    for node_spec in ordered:
        node = build_node(node_spec, table.shapes(), len(train_rows)).to(device)
        names = _needed_variables(node)
        node.prepare({name: np.asarray(table.values[name][train_rows]) for name in names})
        upstream = sorted({producers[name] for name in names if name in producers})
        node_fingerprint = _digest(node_spec.as_dict(), data_fingerprint, upstream)
        loop, learning_rate = loop_config(node_spec)
        loop = dataclasses.replace(loop, progress_keys=("loss", *node.logged_terms))
        optimizer = torch.optim.Adam(list(node.optimised_parameters()), lr=learning_rate)

        def step_fn(batch: np.ndarray, step: int, node=node, names=names):
            return node.objective(table.tensors(names, train_rows[batch], device), step)

        def node_callback(step: int, record: dict, name=node_spec.name) -> None:
            if callback is not None:
                callback(name, step, record)

        result = train(
            node,
            optimizer,
            step_fn,
            len(train_rows),
            loop,
            checkpoint_dir / f"{node_spec.name}.pt",
            node_fingerprint,
            callback=node_callback,
            description=f"{spec.name}: {node_spec.name} ({node_spec.kind})",
            show_progress=show_progress,
            extra_modules=node.auxiliary_state(),
        )
        node.eval()
        test_logs = _test_logs(node, table, names, device, evaluation_batch_size)
        for variable, values in node.derive(table.values, device, evaluation_batch_size).items():
            table.values[variable] = values
            producers[variable] = node_fingerprint
        trained[node_spec.name] = node
        reports[node_spec.name] = NodeReport(node_spec.name, node_spec.kind, result, test_logs, node_fingerprint)
    return TrainedChain(spec, trained, reports)


# ------------------------------------------------------------------------------------------------ files
def save_chain(chain: TrainedChain, folder: str | Path, extra: Mapping[str, Any] | None = None) -> None:
    """``folder/<node>.pt`` (kind, declaration, config, variable shapes, weights) per node and ``chain.json``
    (the declaration, the order, ``extra``), each written atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, node in chain.nodes.items():
        atomic_torch_save(
            {
                "format": NODE_FORMAT,
                "spec": node.spec.as_dict(),
                "config": dataclasses.asdict(node.config),
                "shapes": {k: list(v) for k, v in node.shapes.items()},
                "n_train": node.n_train,
                "state_dict": {k: v.detach().cpu() for k, v in node.state_dict().items()},
            },
            folder / f"{name}.pt",
        )
    payload = {"chain": chain.spec.as_dict(), "order": chain.order, **dict(extra or {})}
    with atomic_path(folder / "chain.json") as temporary:
        temporary.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def load_chain(folder: str | Path, device: torch.device | str = "cpu") -> TrainedChain:
    """The chain :func:`save_chain` wrote to ``folder``; a missing or foreign file is a ValueError naming it."""
    folder = Path(folder)
    index = folder / "chain.json"
    if not index.exists():
        raise ValueError(f"{index} not found (train the chain first)")
    payload = json.loads(index.read_text())
    chain_dict = payload["chain"]
    specs = tuple(
        NodeSpec(
            name=n["name"],
            kind=n["kind"],
            output=n["output"],
            inputs=tuple(n["inputs"]),
            options=n["options"],
            training=n["training"],
        )
        for n in chain_dict["nodes"]
    )
    spec = ChainSpec(chain_dict["name"], specs)
    nodes = {}
    for name in payload["order"]:
        path = folder / f"{name}.pt"
        if not path.exists():
            raise ValueError(f"{path} not found: the chain folder {folder} is incomplete")
        stored = load_tensors_file(path, "chain node file")  # weights only: a node file cannot run code
        if not isinstance(stored, dict) or stored.get("format") != NODE_FORMAT:
            raise ValueError(f"{path} is not a chain node file (expected format {NODE_FORMAT})")
        node = build_node(spec.node(name), {k: tuple(v) for k, v in stored["shapes"].items()}, stored["n_train"])
        node.load_state_dict(stored["state_dict"])
        nodes[name] = node.to(device).eval()
    return TrainedChain(spec, nodes)
