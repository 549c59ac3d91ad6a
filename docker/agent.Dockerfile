# The edge agent image: onnxruntime, the on-device code (fleet/) and the hardware-tests suite, and
# nothing of the build side (no torch, mlflow or prefect). Its command is the agent; settings come
# from EDGELOOP_AGENT_* variables (`edgeloop agent --help` lists them), state lives in the volume
# /var/lib/edgeloop. flows/hardware_docker.py runs the suite in the same image under a profile's CPU
# and memory limits, giving its own command.
#
# Run the agent on a device (host network: the controller and its local /predict on loopback):
#   docker run -d --network host -v edgeloop-agent:/var/lib/edgeloop \
#     -v /etc/edgeloop/registry.pub.pem:/etc/edgeloop/registry.pub.pem:ro \
#     -e EDGELOOP_AGENT_PUBLIC_KEY_FILE=/etc/edgeloop/registry.pub.pem \
#     -e EDGELOOP_AGENT_CONTROLLER_URL=https://fleet.example:8700 -e EDGELOOP_AGENT_ENROLMENT_TOKEN=... \
#     -e EDGELOOP_AGENT_HARDWARE_CLASS=edge-small edgeloop-agent
#
# Build from the repository root:
#   docker build -f docker/agent.Dockerfile -t edgeloop-agent .
# Run the suite (what flows/hardware_docker.py does, plus --cpus/--cpuset-cpus/--memory from the profile):
#   docker run --rm --network none -v "$PWD/m.onnx:/mnt/in/model.onnx:ro" -v "$PWD/g.npz:/mnt/in/golden.npz:ro" \
#     -v "$PWD/out:/mnt/out" edgeloop-agent python -m pytest /opt/edgeloop/hardware-tests -p no:cacheprovider \
#     --model-path /mnt/in/model.onnx --golden /mnt/in/golden.npz --profile edge-small --report /mnt/out/report.json
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/edgeloop

# The project's core dependencies are what a device needs; the [agent] extra adds pytest for the
# suite. Only fleet/ is copied, so the installed package holds the on-device code and nothing of
# the build side (flows/, registry/: the [platform] extra, never installed here).
COPY pyproject.toml README.md ./
COPY fleet/ ./fleet/
RUN pip install ".[agent]"

COPY hardware-tests/ ./hardware-tests/

# Runs unprivileged; flows/hardware_docker.py passes the caller's uid so reports stay theirs.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin edgeloop \
    && mkdir -p /var/lib/edgeloop && chown 10001 /var/lib/edgeloop
ENV EDGELOOP_AGENT_STATE_DIR=/var/lib/edgeloop/agent \
    EDGELOOP_AGENT_PROFILES_DIR=/opt/edgeloop/hardware-tests/profiles
VOLUME ["/var/lib/edgeloop"]
USER 10001

# Healthy when onnxruntime and the on-device code load (the suite and the agent need both).
HEALTHCHECK --interval=60s --timeout=10s --retries=3 \
    CMD ["python", "-c", "import onnxruntime, fleet.shared.runtime"]

CMD ["python", "-m", "fleet.agent.agent"]
