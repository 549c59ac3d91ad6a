"""edgeloop.cli.images with a fake Docker client, and one build on a real engine where one runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from docker.errors import APIError, BuildError, DockerException

from edgeloop import __version__
from edgeloop.cli import images
from edgeloop.cli.images import IMAGES, ImageBuildError, build, select


@dataclass
class FakeImages:
    logs: list[dict[str, Any]]
    fail: Exception | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)

    def build(self, **kwargs: Any) -> tuple[Any, list[dict[str, Any]]]:
        self.calls.append(kwargs)
        if self.fail is not None:
            raise self.fail
        return object(), self.logs


@dataclass
class FakeClient:
    images: FakeImages

    def ping(self) -> bool:
        return True


def test_builds_each_image_from_the_repository_root_with_its_dockerfile_and_tag() -> None:
    client = FakeClient(
        FakeImages([{"stream": "Step 1/9 : FROM python\n"}, {"aux": {}}, {"status": "done"}])
    )
    lines: list[str] = []
    built = build(client, select("all"), tag="1.2.3", context=Path("/src"), on_line=lines.append)
    assert built == ["edgeloop-agent:1.2.3", "edgeloop-trainer:1.2.3"]
    assert client.images.calls == [
        {
            "path": "/src",
            "dockerfile": "docker/agent.Dockerfile",
            "tag": "edgeloop-agent:1.2.3",
            "rm": True,
        },
        {
            "path": "/src",
            "dockerfile": "docker/trainer.Dockerfile",
            "tag": "edgeloop-trainer:1.2.3",
            "rm": True,
        },
    ]
    assert lines[:3] == [
        "building edgeloop-agent:1.2.3 from docker/agent.Dockerfile",
        "Step 1/9 : FROM python",
        "done",
    ]


def test_default_tag_is_the_package_version_and_dockerfiles_exist() -> None:
    client = FakeClient(FakeImages([]))
    assert build(client, select("agent"), on_line=lambda _: None) == [
        f"edgeloop-agent:{__version__}"
    ]
    for spec in IMAGES.values():
        assert (images.ROOT / spec.dockerfile).is_file()


def test_unknown_image_name_is_refused() -> None:
    with pytest.raises(ImageBuildError, match=r"unknown image 'gpu'.*agent, trainer, all"):
        select("gpu")


def test_latest_tag_is_refused_before_any_build() -> None:
    client = FakeClient(FakeImages([]))
    with pytest.raises(ImageBuildError, match="'latest' does not name a release"):
        build(client, select("agent"), tag="latest")
    assert client.images.calls == []


def test_a_failed_build_names_the_image_and_the_step() -> None:
    client = FakeClient(FakeImages([], fail=BuildError("pip install failed", build_log=[])))
    with pytest.raises(
        ImageBuildError, match="building the trainer image failed: pip install failed"
    ):
        build(client, select("trainer"), on_line=lambda _: None)


def test_an_engine_refusal_is_one_line() -> None:
    client = FakeClient(FakeImages([], fail=APIError("500", explanation="no space left on device")))
    with pytest.raises(
        ImageBuildError, match="refused to build the agent image: no space left on device"
    ):
        build(client, select("agent"), on_line=lambda _: None)


def test_no_engine_gives_one_line_with_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    import docker

    def unreachable() -> Any:
        raise DockerException("Error while fetching server API version: connection refused")

    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:1")
    monkeypatch.setattr(docker, "from_env", unreachable)
    with pytest.raises(ImageBuildError) as caught:
        images.engine()
    assert str(caught.value) == (
        "no Docker engine is reachable at tcp://127.0.0.1:1: Error while fetching server API "
        "version: connection refused (start Docker, or set DOCKER_HOST to a running engine)"
    )


@pytest.mark.integration
def test_agent_image_builds_on_a_real_engine() -> None:
    try:
        client = images.engine()
    except ImageBuildError as exc:
        pytest.skip(f"no Docker engine: {exc}")
    built = build(client, select("agent"), tag="test", on_line=lambda _: None)
    assert client.images.get(built[0]) is not None  # type: ignore[attr-defined]
