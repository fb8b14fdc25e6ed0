"""Stage two: models of p(x | y, z) that add the residual z to the stage-one reconstruction y, and the pairing
of (x, y) they train on."""

from multistage.models.stage_two.msvae import MSVAE, MSVAEConfig
from multistage.models.stage_two.pairing import make_pairs

__all__ = ["MSVAE", "MSVAEConfig", "make_pairs"]
