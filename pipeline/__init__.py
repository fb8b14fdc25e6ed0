"""Pipeline entry points: ``pipeline.repro`` (dvc repro under one MLflow parent run) and ``pipeline.flow``
(the same stages as Prefect tasks)."""
