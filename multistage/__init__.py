"""multistage: multi-stage disentangled representation learning (a disentangled stage one, a residual stage two)."""
