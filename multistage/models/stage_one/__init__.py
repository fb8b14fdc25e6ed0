"""Stage one: disentangled representation learners whose decoder turns the codes c into y = E[p(y|c)].

Every model implements ``multistage.models.stage_one.base.StageOneModel``; the registry
(``multistage.models.registry.STAGE_ONE``) maps the names used in params.yaml to them.
"""

from multistage.models.stage_one.base import ConfigError, GaussianVAE, StageOneConfig, StageOneModel
from multistage.models.stage_one.betatcvae import BetaTCVAE, BetaTCVAEConfig
from multistage.models.stage_one.betavae import AnnealedVAE, AnnealedVAEConfig, BetaVAE, BetaVAEConfig
from multistage.models.stage_one.dipvae import DIPVAE, DIPVAEConfig
from multistage.models.stage_one.factorvae import FactorVAE, FactorVAEConfig
from multistage.models.stage_one.jointvae import JointVAE, JointVAEConfig

__all__ = [
    "AnnealedVAE",
    "AnnealedVAEConfig",
    "BetaTCVAE",
    "BetaTCVAEConfig",
    "BetaVAE",
    "BetaVAEConfig",
    "ConfigError",
    "DIPVAE",
    "DIPVAEConfig",
    "FactorVAE",
    "FactorVAEConfig",
    "GaussianVAE",
    "JointVAE",
    "JointVAEConfig",
    "StageOneConfig",
    "StageOneModel",
]
