"""Mined data: windows of corpus tokens, and each feature's statistics and examples.

Mining writes here and the explainers and scorers read back. A window is stored once
per subject (deduplicated by its tokens) and shared by every feature that fires on
it; an example points at a window and carries the feature's per-token activations,
and a feature's examples are kept together as one packed row (`ExampleSet`).
Writes are idempotent, so mining resumes feature by feature: `feature_statuses` and
`mining_runs` say what is done. A dictionary shared by several hook points also keeps
each feature's layer map (its mean top activation at every point), which
`Store.layer_peaks` (store.search) reads back.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, select, update
from sqlalchemy.orm import Session

from gloss.store.base import StoreBase, index_in
from gloss.store.errors import InputError
from gloss.store.models import Feature, FeatureExamples, Window
from gloss.store.statuses import MINED_STATUSES, FeatureStatus
from gloss.store.types import SPLITS, ExampleOut, ExampleSet, MinedFeature, WindowIn


class Mined(StoreBase):
    # ------------------------------------------------------------ writes

    def add_windows(self, subject_id: int, windows: Sequence[WindowIn]) -> list[int]:
        """Store windows once per subject (deduplicated by token content); ids in input order."""
        if not windows:
            return []
        hashes = [_window_hash(w.token_ids) for w in windows]
        rows = [
            {
                "subject_id": subject_id,
                "doc_id": w.doc_id,
                "offset": w.offset,
                "content_hash": h,
                "token_ids": list(w.token_ids),
                "tokens": list(w.tokens),
            }
            for w, h in zip(windows, hashes, strict=True)
        ]
        ids: dict[str, int] = {}
        with self.session() as s:
            for start in range(0, len(rows), 500):
                chunk = rows[start : start + 500]
                s.execute(
                    self._insert(Window).on_conflict_do_nothing(
                        index_elements=["subject_id", "content_hash"]
                    ),
                    chunk,
                )
                chunk_hashes = [r["content_hash"] for r in chunk]
                ids.update(
                    s.execute(
                        select(Window.content_hash, Window.id).where(
                            Window.subject_id == subject_id,
                            Window.content_hash.in_(chunk_hashes),
                        )
                    ).all()
                )
        return [ids[h] for h in hashes]

    def write_mined_features(
        self, source_id: int, features: Sequence[MinedFeature], run_id: int | None = None
    ) -> None:
        """Write statistics and examples for mined features in one transaction.

        Idempotent: a feature mined again has its old examples replaced, never doubled.
        A feature with max_act <= 0 is recorded as dead.
        """
        if not features:
            return
        indices = [f.index for f in features]
        with self.session() as s:
            s.execute(
                self._insert(Feature).on_conflict_do_nothing(index_elements=["source_id", "index"]),
                [
                    {"source_id": source_id, "index": i, "status": FeatureStatus.NEW, "failures": 0}
                    for i in indices
                ],
            )
            id_of = dict(
                s.execute(
                    select(Feature.index, Feature.id).where(
                        Feature.source_id == source_id, index_in(indices)
                    )
                ).all()
            )
            feature_ids = list(id_of.values())
            s.execute(
                delete(FeatureExamples).where(
                    FeatureExamples.feature_id.in_(
                        bindparam("ids", feature_ids, expanding=True, literal_execute=True)
                    )
                )
            )
            s.execute(
                update(cast(Table, Feature.__table__)).where(Feature.id == bindparam("feature_id")),
                [
                    {
                        "feature_id": id_of[f.index],
                        "status": FeatureStatus.MINED if f.max_act > 0 else FeatureStatus.DEAD,
                        "max_act": f.max_act,
                        "mean_act": f.mean_act,
                        "density": f.density,
                        "n_tokens": f.n_tokens,
                        "histogram": f.histogram,
                        "layers": f.layers,
                        "mine_run_id": run_id,
                    }
                    for f in features
                ],
            )
            sets = [e if isinstance(e, ExampleSet) else ExampleSet.of(e) for e in
                    (f.examples for f in features)]  # fmt: skip
            shown = [(f, e) for f, e in zip(features, sets, strict=True) if len(e)]
            packed = ExampleSet.pack_all([e for _, e in shown])
            rows = [(id_of[f.index], len(e), data)
                    for (f, e), data in zip(shown, packed, strict=True)]  # fmt: skip
            if rows:
                self._bulk_insert_examples(s, rows)

    def _bulk_insert_examples(self, s: Session, rows: list[tuple]) -> None:
        """The hot path of mining: straight to the driver (COPY on PostgreSQL)."""
        driver: Any = s.connection().connection.driver_connection  # psycopg or sqlite3
        cursor = driver.cursor()
        if self.dialect == "postgresql":
            with cursor.copy("COPY feature_examples (feature_id, count, data) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            cursor.executemany(
                "INSERT INTO feature_examples (feature_id, count, data) VALUES (?, ?, ?)", rows
            )
        cursor.close()

    # ------------------------------------------------------------ reads

    def feature_statuses(
        self, source_id: int, indices: Sequence[int] | None = None
    ) -> dict[int, str]:
        """Each feature's index and status (new, mined, dead), for mining to resume."""
        query = select(Feature.index, Feature.status).where(Feature.source_id == source_id)
        if indices is not None:
            query = query.where(index_in(indices))
        with self.session() as s:
            return dict(s.execute(query).all())

    def mining_runs(self, source_id: int) -> dict[int, int | None]:
        """Each mined (or dead) feature's index and the run that mined it."""
        with self.session() as s:
            return dict(
                s.execute(
                    select(Feature.index, Feature.mine_run_id).where(
                        Feature.source_id == source_id, Feature.status.in_(MINED_STATUSES)
                    )
                ).all()
            )

    def examples(self, feature_id: int, split: str | None = None) -> list[ExampleOut]:
        """A feature's examples (of one split), ordered by split, kind and rank."""
        with self.session() as s:
            data = s.scalar(
                select(FeatureExamples.data).where(FeatureExamples.feature_id == feature_id)
            )
            if data is None:
                return []
            rows = ExampleSet.unpack(data).rows()
            if split is not None:
                if split not in SPLITS:
                    raise InputError(f"no split {split!r}; the splits are {', '.join(SPLITS)}")
                rows = [r for r in rows if r[1] == split]
            ids = sorted({r[0] for r in rows})
            windows = {w.id: w for w in s.scalars(select(Window).where(Window.id.in_(ids))).all()}
        return [
            ExampleOut(
                window_id=window_id,
                split=split_,
                kind=kind,
                rank=rank,
                max_act=max_act,
                doc_id=windows[window_id].doc_id,
                offset=windows[window_id].offset,
                tokens=list(windows[window_id].tokens),
                token_ids=list(windows[window_id].token_ids),
                acts=acts,
            )
            for window_id, split_, kind, rank, max_act, acts in sorted(
                rows, key=lambda r: (r[1], r[2], r[3])
            )
        ]


def _window_hash(token_ids: Sequence[int]) -> str:
    return hashlib.sha256(struct.pack(f"<{len(token_ids)}q", *token_ids)).hexdigest()
