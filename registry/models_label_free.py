"""ORM rows of monitoring without labels: version references and unlabelled windows.

On the same `Base` as `registry/models.py` (which imports this module so that the metadata, the
migrations test and the auditor role see these tables). Their migration is
`migrations/versions/0005_label_free.py`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from registry.entities_label_free import ReferenceEntity, WindowEntity
from registry.models_base import Base, entity_from_row, utcnow


class ReferenceRow(Base):
    __tablename__ = "version_references"

    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), primary_key=True)
    digest: Mapped[str] = mapped_column(ForeignKey("blobs.digest"))
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def to_entity(self) -> ReferenceEntity:
        return entity_from_row(self, ReferenceEntity)


class WindowRow(Base):
    __tablename__ = "unlabelled_windows"
    __table_args__ = (Index(None, "site", "window_start"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    site: Mapped[str] = mapped_column(String(64))
    window_start: Mapped[datetime]
    window_end: Mapped[datetime]
    n_studies: Mapped[int] = mapped_column(Integer)
    shifted: Mapped[bool] = mapped_column(Boolean)
    alpha: Mapped[float] = mapped_column(Float)
    tests: Mapped[dict[str, Any]] = mapped_column(default=dict)
    estimates: Mapped[dict[str, Any]] = mapped_column(default=dict)
    ood: Mapped[dict[str, Any]] = mapped_column(default=dict)
    moved: Mapped[list[Any]] = mapped_column(default=list)
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id"))
    report_id: Mapped[int | None] = mapped_column(ForeignKey("error_reports.id"))
    realised: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def to_entity(self) -> WindowEntity:
        return entity_from_row(self, WindowEntity)

