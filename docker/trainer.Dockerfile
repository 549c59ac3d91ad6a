# The trainer image: the platform stack (torch, Prefect, MLflow, Great Expectations) and the flow
# code, running a Prefect worker on one training pool. `edgeloop place` submits the placed training
# flow to the pool; the worker imports it from the edgeloop installed here (the deployment names it
# by module path: `placement.source` unset), and gets the parameters with the flow run and the
# training data from the platform's DVC remote (EDGELOOP_DVC_REMOTE, flows/data_remote.py).
#
# Build from the repository root:
#   docker build -f docker/trainer.Dockerfile -t edgeloop-trainer:0.1.0 .
# Run one worker per pool and provider:
#   docker run -e PREFECT_API_URL=http://prefect.internal:4200/api -e EDGELOOP_POOL=train-aws-eu \
#     -e MLFLOW_TRACKING_URI=http://mlflow.internal:5000 edgeloop-trainer:0.1.0
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PREFECT_HOME=/var/lib/edgeloop/prefect \
    EDGELOOP_HOME=/var/lib/edgeloop \
    EDGELOOP_HARDWARE_TESTS_DIR=/opt/edgeloop/hardware-tests \
    EDGELOOP_PROFILES_DIR=/opt/edgeloop/hardware-tests/profiles \
    EDGELOOP_MODEL_CARDS_DIR=/var/lib/edgeloop/model-cards \
    EDGELOOP_POOL=train-aws-eu

WORKDIR /opt/edgeloop

# Packages first (the layer that changes least), then the flows and the suite they call.
COPY pyproject.toml README.md ./
COPY edgeloop/ ./edgeloop/
COPY flows/ ./flows/
COPY registry/ ./registry/
COPY fleet/ ./fleet/
RUN pip install ".[platform]"

COPY hardware-tests/ ./hardware-tests/
COPY params.yaml ./

RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/edgeloop --shell /usr/sbin/nologin edgeloop
USER 10001

# Healthy while the worker's Prefect API answers; the worker itself reports its heartbeats there.
HEALTHCHECK --interval=30s --timeout=10s --retries=3 \
    CMD ["python", "-c", "import os, httpx; httpx.get(os.environ['PREFECT_API_URL'] + '/health', timeout=5).raise_for_status()"]

CMD ["sh", "-c", "exec prefect worker start --pool \"$EDGELOOP_POOL\" --type process"]
