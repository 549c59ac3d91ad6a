"""Where the stages read and write: one folder layout shared by `dvc repro` and the Prefect flow."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workspace:
    splits_dir: Path  # data/splits: DVC-tracked splits and schema.json
    work_dir: Path  # .edgeloop/work: model, variants, evaluation

    @property
    def data_report(self) -> Path:
        return self.work_dir / "data-report.json"

    @property
    def model_state(self) -> Path:
        return self.work_dir / "model.pt"

    @property
    def history(self) -> Path:
        return self.work_dir / "history.json"

    @property
    def variants_dir(self) -> Path:
        return self.work_dir / "variants"

    @property
    def fp32(self) -> Path:
        return self.variants_dir / "fp32.onnx"

    @property
    def skipped_variants(self) -> Path:
        """Why a variant was not built (JSON: name → reason), beside the variants."""
        return self.variants_dir / "skipped.json"

    @property
    def imported(self) -> Path:
        """A model trained elsewhere as the loop takes it (dynamic batch, contract stored)."""
        return self.work_dir / "imported.onnx"

    @property
    def evaluation(self) -> Path:
        return self.work_dir / "evaluation.json"

    @property
    def golden(self) -> Path:
        return self.work_dir / "golden.npz"

    @property
    def hardware_dir(self) -> Path:
        return self.work_dir / "hardware"
