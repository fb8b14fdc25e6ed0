"""Model registry: a name -> (model class, config dataclass) table per stage, and builders that fail clearly.

    build("stage_one", "betatcvae", latent_dim=10, beta=6.0, dataset_size=len(train))
    build_model("msvae", image_channels=3)           # the name alone when it is unique across stages

An unknown stage, model name or option raises ValueError naming it and listing what is allowed. New models are
added by putting one line in STAGE_ONE or STAGE_TWO.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from multistage.models.stage_one import (
    DIPVAE,
    AnnealedVAE,
    AnnealedVAEConfig,
    BetaTCVAE,
    BetaTCVAEConfig,
    BetaVAE,
    BetaVAEConfig,
    DIPVAEConfig,
    FactorVAE,
    FactorVAEConfig,
    JointVAE,
    JointVAEConfig,
)
from multistage.models.stage_two.ablations import (
    CInputVAE,
    CodeConditionedConfig,
    ConcatVAE,
    EndToEndConfig,
    EndToEndVAE,
    ZFirstConfig,
    ZFirstVAE,
)
from multistage.models.stage_two.baselines import BetaTCVAEL, BetaTCVAELConfig, BigVAE, BigVAEConfig
from multistage.models.stage_two.msflow import MSFlow, MSFlowConfig
from multistage.models.stage_two.msgan import MSGAN, MSGANConfig
from multistage.models.stage_two.msvae import MSVAE, MSVAEConfig

# stage one: every entry's config extends multistage.models.stage_one.base.StageOneConfig
STAGE_ONE: dict[str, tuple[type[nn.Module], type]] = {
    "betavae": (BetaVAE, BetaVAEConfig),  # Higgins et al. 2017; JointVAE paper eq. 1
    "annealedvae": (AnnealedVAE, AnnealedVAEConfig),  # Burgess et al. 2018; JointVAE paper eq. 3
    "betatcvae": (BetaTCVAE, BetaTCVAEConfig),  # beta-TCVAE paper eq. 5
    "dipvae": (DIPVAE, DIPVAEConfig),  # DIP-VAE paper eqs. 6-7
    "jointvae": (JointVAE, JointVAEConfig),  # JointVAE paper eq. 7
    "factorvae": (FactorVAE, FactorVAEConfig),  # Kim & Mnih 2018
}
# stage two: every entry's class extends multistage.models.stage_two.base.StageTwoModel, its config StageTwoConfig;
# the variant names of params.yaml stage_two.variants (MS-VAE sec. 3.2, sec. 4 baselines, appendix L ablations)
STAGE_TWO: dict[str, tuple[type[nn.Module], type]] = {
    "msvae": (MSVAE, MSVAEConfig),  # sec. 3.2, eq. 2 term (b)
    "msgan": (MSGAN, MSGANConfig),  # app. E: conditional GAN, AdaIN generator, D([x, y])
    "msflow": (MSFlow, MSFlowConfig),  # app. D: conditional coupling flow p(x | y), exact
    "betatcvae_l": (BetaTCVAEL, BetaTCVAELConfig),  # sec. 4: beta-TCVAE with |C| + |Z| latents
    "bigvae": (BigVAE, BigVAEConfig),  # sec. 4.1: a plain VAE as large as MS-VAE
    "end_to_end": (EndToEndVAE, EndToEndConfig),  # app. L.1 (M1): C and Z jointly, penalty on C only
    "c_input": (CInputVAE, CodeConditionedConfig),  # app. L.2 (M3): C instead of Y, Z through AdaIN
    "concat": (ConcatVAE, CodeConditionedConfig),  # app. L.2 (M2): [C, Z] concatenated, no AdaIN
    "z_first": (ZFirstVAE, ZFirstConfig),  # app. L.3 (M5): Z learned first, C second
}
REGISTRIES: dict[str, dict[str, tuple[type[nn.Module], type]]] = {"stage_one": STAGE_ONE, "stage_two": STAGE_TWO}


def lookup(kind: str, name: str) -> tuple[type[nn.Module], type]:
    """(model class, config dataclass) registered as ``name`` for stage ``kind`` ("stage_one" or "stage_two")."""
    if kind not in REGISTRIES:
        raise ValueError(f"unknown model kind {kind!r}; allowed kinds: {', '.join(sorted(REGISTRIES))}")
    table = REGISTRIES[kind]
    if name not in table:
        raise ValueError(f"unknown {kind} model {name!r}; allowed {kind} models: {', '.join(sorted(table))}")
    return table[name]


def build_config(kind: str, name: str, **options: Any) -> Any:
    """The config dataclass of model ``name`` with ``options`` set; an unknown option is a ValueError."""
    _, config_class = lookup(kind, name)
    allowed = [field.name for field in dataclasses.fields(config_class)]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for {kind} model {name!r}; "
            f"allowed options: {', '.join(allowed)}"
        )
    return config_class(**options)


def build(kind: str, name: str, **options: Any) -> nn.Module:
    """A fresh model ``name`` of stage ``kind`` built from its config dataclass with ``options``."""
    model_class, _ = lookup(kind, name)
    return model_class(build_config(kind, name, **options))


def build_model(name: str, **options: Any) -> nn.Module:
    """``build`` with the stage inferred from the name (names are unique across stages)."""
    kinds = [kind for kind, table in REGISTRIES.items() if name in table]
    if not kinds:
        allowed = sorted(model for table in REGISTRIES.values() for model in table)
        raise ValueError(f"unknown model {name!r}; allowed models: {', '.join(allowed)}")
    return build(kinds[0], name, **options)
