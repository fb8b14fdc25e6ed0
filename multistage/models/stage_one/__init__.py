"""Stage one: disentangled representation learners whose decoder turns the codes c into y = E[p(y|c)]."""

from multistage.models.stage_one.betatcvae import BetaTCVAE, BetaTCVAEConfig

__all__ = ["BetaTCVAE", "BetaTCVAEConfig"]
