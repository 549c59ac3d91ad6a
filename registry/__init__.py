"""The model registry on MLflow: versions, lineage tags, aliases, signed variants and model cards."""
