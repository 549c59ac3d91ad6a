"""fleet.agent.config: AgentConfig read from EDGELOOP_AGENT_* by pydantic-settings, bad values as AgentConfigError."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fleet.agent.config import AgentConfig
from fleet.agent.errors import AgentConfigError
from fleet.shared.protocol import LONG_POLL_MAX_S


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No EDGELOOP_AGENT_* from the machine running the tests."""
    for name in list(os.environ):
        if name.upper().startswith("EDGELOOP_AGENT_"):
            monkeypatch.delenv(name)


def test_defaults_without_variables() -> None:
    config = AgentConfig.from_env()
    assert config.controller_url == "http://127.0.0.1:8700"
    assert config.state_dir == Path(".edgeloop/agent")
    assert config.hardware_class == "host-cpu"
    assert config.labels == {}
    assert config.long_poll_s == LONG_POLL_MAX_S
    assert (config.backoff_initial_s, config.backoff_max_s, config.backoff_jitter) == (1, 60, 0.2)
    assert config.predict_port == 8701
    assert config.enrolment_token is None
    assert config.credential_path == Path(".edgeloop/agent/credential.json")


def test_reads_each_setting_from_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGELOOP_AGENT_CONTROLLER_URL", "https://fleet.example:8700")
    monkeypatch.setenv("EDGELOOP_AGENT_DEVICE_ID", "cam-7")
    monkeypatch.setenv("EDGELOOP_AGENT_LABELS", '{"site": "north"}')
    monkeypatch.setenv("EDGELOOP_AGENT_ENROLMENT_TOKEN", "s3cret")
    monkeypatch.setenv("EDGELOOP_AGENT_TELEMETRY_BATCH", "25")
    monkeypatch.setenv("EDGELOOP_AGENT_ALLOW_INSECURE", "true")
    monkeypatch.setenv("EDGELOOP_AGENT_PUBLIC_KEY_FILE", "/etc/edgeloop/registry.pub.pem")
    monkeypatch.setenv("EDGELOOP_AGENT_CA_FILE", "/etc/edgeloop/controller-ca.pem")
    config = AgentConfig.from_env()
    assert config.controller_url == "https://fleet.example:8700"
    assert config.public_key_file == Path("/etc/edgeloop/registry.pub.pem")
    assert config.ca_file == Path("/etc/edgeloop/controller-ca.pem")
    assert config.device_id == "cam-7"
    assert config.labels == {"site": "north"}
    assert config.enrolment_token is not None
    assert config.enrolment_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(config)
    assert config.telemetry_batch == 25
    assert config.allow_insecure is True


def test_outside_loopback_the_registry_key_must_be_pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    """A device that would trust whatever key the controller hands it at enrolment is refused to
    start, unless the controller is on this machine (development)."""
    monkeypatch.setenv("EDGELOOP_AGENT_CONTROLLER_URL", "https://fleet.example:8700")
    with pytest.raises(AgentConfigError) as refused:
        AgentConfig.from_env()
    assert refused.value.setting == "public_key_file"
    assert "EDGELOOP_AGENT_PUBLIC_KEY_FILE is not set" in str(refused.value)
    for loopback in ("http://127.0.0.1:8700", "http://localhost:8700", "http://[::1]:8700"):
        monkeypatch.setenv("EDGELOOP_AGENT_CONTROLLER_URL", loopback)
        assert AgentConfig.from_env().public_key_file is None


def test_outside_loopback_an_https_controller_needs_its_ca_pinned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A device that would take any certificate the system's trust store accepts for the
    controller's name is refused to start, unless the controller is on this machine; plain http off
    loopback is the client's refusal (``allow_insecure``), not this one."""
    monkeypatch.setenv("EDGELOOP_AGENT_PUBLIC_KEY_FILE", "/etc/edgeloop/registry.pub.pem")
    for remote in ("https://fleet.example:8700", "https://10.0.0.5:8700", "HTTPS://fleet.example"):
        monkeypatch.setenv("EDGELOOP_AGENT_CONTROLLER_URL", remote)
        with pytest.raises(AgentConfigError) as refused:
            AgentConfig.from_env()
        assert refused.value.setting == "ca_file"
        assert str(refused.value).startswith("EDGELOOP_AGENT_CA_FILE is not set: ")
        assert "fleet.example" in str(refused.value) or "10.0.0.5" in str(refused.value)
        # allow_insecure is about plain http: it does not let https go unpinned
        with pytest.raises(AgentConfigError, match="CA_FILE is not set"):
            AgentConfig.from_env(allow_insecure=True)
        pinned = AgentConfig.from_env(ca_file=Path("/etc/edgeloop/controller-ca.pem"))
        assert pinned.ca_file == Path("/etc/edgeloop/controller-ca.pem")
    for loopback in ("https://127.0.0.1:8700", "https://localhost:8700", "https://[::1]:8700"):
        monkeypatch.setenv("EDGELOOP_AGENT_CONTROLLER_URL", loopback)
        assert AgentConfig.from_env().ca_file is None  # development: the system store will do
    monkeypatch.setenv("EDGELOOP_AGENT_CONTROLLER_URL", "http://fleet.example:8700")
    assert AgentConfig.from_env(allow_insecure=True).ca_file is None


def test_overrides_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGELOOP_AGENT_DEVICE_ID", "from-env")
    assert AgentConfig.from_env(device_id="from-flag").device_id == "from-flag"


@pytest.mark.parametrize("value", ["", "off", "OFF", " none "])
def test_predict_port_off(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("EDGELOOP_AGENT_PREDICT_PORT", value)
    assert AgentConfig.from_env().predict_port is None


@pytest.mark.parametrize(
    ("variable", "value", "setting", "message"),
    [
        ("EDGELOOP_AGENT_LABELS", "{not json", "labels", "EDGELOOP_AGENT_LABELS: .*JSON object"),
        ("EDGELOOP_AGENT_LABELS", "[1, 2]", "labels", "EDGELOOP_AGENT_LABELS: .*dictionary"),
        (
            "EDGELOOP_AGENT_TELEMETRY_BATCH",
            "0",
            "telemetry_batch",
            "TELEMETRY_BATCH: .*greater than or equal to 1",
        ),
        ("EDGELOOP_AGENT_DEVICE_ID", "bad id!", "device_id", "EDGELOOP_AGENT_DEVICE_ID: .*pattern"),
        ("EDGELOOP_AGENT_PREDICT_PORT", "http", "predict_port", "EDGELOOP_AGENT_PREDICT_PORT"),
        (
            "EDGELOOP_AGENT_BACKOFF_JITTER",
            "2",
            "backoff_jitter",
            "BACKOFF_JITTER: .*less than or equal to 1",
        ),
    ],
)
def test_a_bad_value_is_one_config_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, setting: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(AgentConfigError, match=message) as info:
        AgentConfig.from_env()
    assert info.value.setting == setting
    assert info.value.message.startswith("invalid agent settings: ")


def test_backoff_max_below_initial(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGELOOP_AGENT_BACKOFF_INITIAL_S", "10")
    monkeypatch.setenv("EDGELOOP_AGENT_BACKOFF_MAX_S", "5")
    with pytest.raises(AgentConfigError, match=r"BACKOFF_MAX_S .* is below") as info:
        AgentConfig.from_env()
    assert info.value.setting == "backoff_max_s"


def test_help_lists_every_setting_with_its_default_and_meaning() -> None:
    from fleet.agent.config import settings_help

    text = settings_help()
    for name, field in AgentConfig.model_fields.items():
        assert f"EDGELOOP_AGENT_{name.upper()}  (default: " in text
        assert field.description, f"{name} has no description for --help"
    assert "EDGELOOP_AGENT_PREDICT_PORT  (default: 8701)" in text
