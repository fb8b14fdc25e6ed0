"""Models: stage one (disentangled codes c -> y) and stage two (y and a residual z -> x), and their registry."""

from multistage.models.registry import STAGE_ONE, STAGE_TWO, build, build_config, build_model

__all__ = ["STAGE_ONE", "STAGE_TWO", "build", "build_config", "build_model"]
