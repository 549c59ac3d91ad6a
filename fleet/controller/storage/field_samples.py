"""Labelled field samples: a bounded sample of real inputs per device, kept for retraining.

Devices send some of the inputs they served, with the prediction and, once it came back, the ground
truth label (and whether the device's drift detector flagged the input). The controller keeps the newest
``MAX_PER_DEVICE`` per device, so a chatty device cannot fill the database; the training side pulls them
by id (``since``), which makes a pull resumable and never returns a sample twice.

The table is registered on the controller's ``Base.metadata``; migration 0004 creates it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, delete, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from fleet.controller.storage.db import ID, Base, UTCDateTime


class FieldSampleRow(Base):
    """One input a device saw, with its prediction and the ground-truth label when it came back."""

    __tablename__ = "field_samples"
    __table_args__ = (Index("ix_field_samples_device", "device_id", "id"),)
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.device_id"))
    model: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(128))
    features: Mapped[list[float]] = mapped_column(JSON)
    predicted: Mapped[int | None] = mapped_column(Integer, nullable=True)
    label: Mapped[int | None] = mapped_column(Integer, nullable=True)
    drifted: Mapped[bool] = mapped_column(Boolean)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)


MAX_PER_DEVICE = 2000
"""Samples kept per device; older ones are dropped as new ones arrive."""


def add_samples(
    session: Session, device_id: str, samples: Sequence[dict[str, Any]], now: datetime
) -> int:
    """Store ``samples`` (dicts of the row's fields) and trim the device to ``MAX_PER_DEVICE``;
    returns how many older samples were dropped. Commits."""
    session.add_all(
        FieldSampleRow(device_id=device_id, received_at=now, **sample) for sample in samples
    )
    session.flush()
    cutoff = session.scalar(
        select(FieldSampleRow.id)
        .where(FieldSampleRow.device_id == device_id)
        .order_by(FieldSampleRow.id.desc())
        .offset(MAX_PER_DEVICE)
        .limit(1)
    )
    dropped = 0
    if cutoff is not None:
        result = session.execute(
            delete(FieldSampleRow).where(
                FieldSampleRow.device_id == device_id, FieldSampleRow.id <= cutoff
            )
        )
        dropped = int(getattr(result, "rowcount", 0) or 0)
    session.commit()
    return dropped


def samples_since(
    session: Session, since: int, limit: int, *, labelled_only: bool
) -> list[FieldSampleRow]:
    """Samples with ``id > since`` in id order, at most ``limit``."""
    query = select(FieldSampleRow).where(FieldSampleRow.id > since)
    if labelled_only:
        query = query.where(FieldSampleRow.label.is_not(None))
    return list(session.scalars(query.order_by(FieldSampleRow.id).limit(limit)))
