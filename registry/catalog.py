"""Reading the registry back: versions with their aliases and key tags, for `edgeloop models`."""

from __future__ import annotations

from dataclasses import dataclass

from mlflow import MlflowClient

from registry import tags as tag

KEY_TAGS = (tag.VARIANT, tag.GATES, tag.GIT_COMMIT, tag.DATA_HASH)


@dataclass(frozen=True)
class VersionRow:
    model: str
    version: str
    aliases: tuple[str, ...]
    created_ms: int
    tags: dict[str, str]


def list_versions(client: MlflowClient, model: str | None = None) -> list[VersionRow]:
    names = [model] if model else [m.name for m in client.search_registered_models()]
    rows: list[VersionRow] = []
    for name in names:
        aliases_by_version: dict[str, list[str]] = {}
        for alias, version in client.get_registered_model(name).aliases.items():
            aliases_by_version.setdefault(str(version), []).append(alias)
        for mv in client.search_model_versions(f"name='{name}'"):
            rows.append(
                VersionRow(
                    model=name,
                    version=str(mv.version),
                    aliases=tuple(sorted(aliases_by_version.get(str(mv.version), []))),
                    created_ms=int(mv.creation_timestamp or 0),
                    tags=dict(mv.tags),
                )
            )
    return sorted(rows, key=lambda r: (r.model, -int(r.version)))
