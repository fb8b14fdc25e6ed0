"""Stage chains: hierarchies of models declared as data (a DAG of nodes over named variables), validated,
ordered and trained in order by one runner (MS-VAE's two-stage image pipeline and its appendix C pendulum are
two declarations of the same machinery).

* ``dag``: declarations (:class:`ChainSpec`, :class:`NodeSpec`), validation and the topological order;
* ``nodes``: the node kinds (conditional Gaussian MLP, residual VAE, stage-one and stage-two registry models);
* ``runner``: :func:`train_chain` (one training loop per node, checkpoints, resume), the trained chain's
  generation and inference, its files;
* ``pendulum``: the appendix C data, measured checks and figures.
"""

from multistage.chains.dag import ChainError, ChainSpec, NodeSpec, chain_from_mapping, validate_chain, with_training
from multistage.chains.runner import TrainedChain, VariableTable, load_chain, save_chain, train_chain

__all__ = [
    "ChainError",
    "ChainSpec",
    "NodeSpec",
    "TrainedChain",
    "VariableTable",
    "chain_from_mapping",
    "load_chain",
    "save_chain",
    "train_chain",
    "validate_chain",
    "with_training",
]
