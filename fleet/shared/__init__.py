"""Device-safe code shared by the agent, the simulator, the controller, flows and the registry.

It installs with the core dependencies only (onnxruntime, numpy, pydantic, pyyaml, httpx,
cryptography): hardware profiles, variant signatures, the onnxruntime session, on-device drift
detectors and the wire protocol. import-linter keeps the platform stack out.
"""
