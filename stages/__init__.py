"""One module per DVC stage (``python -m stages.<name>``): read and validate a params section, call the library,
write outputs atomically, log to MLflow. The Prefect flow calls the same ``run`` functions."""
