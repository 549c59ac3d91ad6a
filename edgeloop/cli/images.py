"""Building the project's Docker images with the Docker SDK: the edge agent and the trainer.

| image | Dockerfile | holds |
| --- | --- | --- |
| ``edgeloop-agent`` | ``docker/agent.Dockerfile`` | the on-device code and the hardware-tests suite (agent extra) |
| ``edgeloop-trainer`` | ``docker/trainer.Dockerfile`` | the platform stack; runs a Prefect worker on a training pool |

The client is passed in (``docker.from_env()`` through :func:`engine`), so unit tests use a fake.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edgeloop import __version__
from edgeloop.core.errors import EdgeloopError

ROOT = Path(__file__).resolve().parents[2]  # the build context: the repository root


class ImageBuildError(EdgeloopError):
    """No Docker engine answers, or a build failed; the message names the image and the cause."""


@dataclass(frozen=True)
class ImageSpec:
    name: str
    dockerfile: str  # relative to the build context
    repository: str


IMAGES = {
    "agent": ImageSpec("agent", "docker/agent.Dockerfile", "edgeloop-agent"),
    "trainer": ImageSpec("trainer", "docker/trainer.Dockerfile", "edgeloop-trainer"),
}


class Images(Protocol):
    def build(self, **kwargs: Any) -> tuple[Any, Iterable[dict[str, Any]]]: ...


class DockerClient(Protocol):
    """The part of ``docker.DockerClient`` this module uses."""

    @property
    def images(self) -> Images: ...

    def ping(self) -> bool: ...


def engine() -> DockerClient:
    """A client of the engine in DOCKER_HOST (or the local socket); ImageBuildError when none answers."""
    from docker.errors import DockerException

    sdk: Any = importlib.import_module("docker")  # by name: the repository has a docker/ folder
    where = os.environ.get("DOCKER_HOST", "the local socket")
    try:
        client = sdk.from_env()
        client.ping()
    except DockerException as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ImageBuildError(
            f"no Docker engine is reachable at {where}: {first}",
            hint="start Docker, or set DOCKER_HOST to a running engine",
        ) from exc
    return client


def select(which: str) -> list[ImageSpec]:
    if which == "all":
        return list(IMAGES.values())
    if which not in IMAGES:
        raise ImageBuildError(
            f"unknown image {which!r}", hint=f"choose one of {', '.join([*IMAGES, 'all'])}"
        )
    return [IMAGES[which]]


def build(
    client: DockerClient,
    specs: list[ImageSpec],
    *,
    tag: str = __version__,
    context: Path = ROOT,
    on_line: Callable[[str], None] = print,
) -> list[str]:
    """Build each image as ``<repository>:<tag>``, passing every log line to ``on_line``."""
    from docker.errors import APIError, BuildError

    if not tag or tag == "latest":
        raise ImageBuildError(
            f"image tag {tag!r} does not name a release", hint="pass --tag with a version"
        )
    built = []
    for spec in specs:
        ref = f"{spec.repository}:{tag}"
        on_line(f"building {ref} from {spec.dockerfile}")
        try:
            _, logs = client.images.build(
                path=str(context), dockerfile=spec.dockerfile, tag=ref, rm=True
            )
        except BuildError as exc:
            raise ImageBuildError(
                f"building the {spec.name} image failed: {exc.msg}",
                hint=f"fix {spec.dockerfile} and build again",
            ) from exc
        except APIError as exc:
            raise ImageBuildError(
                f"the Docker engine refused to build the {spec.name} image: {exc.explanation}",
                hint="check the engine's logs",
            ) from exc
        for chunk in logs:
            text = str(chunk.get("stream", chunk.get("status", ""))).rstrip()
            if text:
                on_line(text)
        built.append(ref)
    return built
