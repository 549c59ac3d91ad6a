"""On-device code. It must install on a small device: onnxruntime, numpy, pydantic, pyyaml, httpx only.

Nothing here imports flows, registry, prefect, mlflow or torch (import-linter enforces it), so the
hardware-tests suite and the agent run the same inference code a device runs.
"""
