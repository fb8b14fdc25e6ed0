"""Evaluation as a library: the metric registry, and the representation, reconstruction and comparison helpers
the evaluate stage calls (pure of params.yaml, DVC, Prefect and MLflow)."""
