"""Where the index's points live: a Qdrant Edge shard (embedded, in-process), or a collection through
qdrant-client (a Qdrant server, or qdrant-client's local mode); both answer the same calls.

    store = EdgeStore(folder, dim, wait_s)                   # or ClientStore.server(cfg, dim) / .local(...)
    store.upsert([StoredPoint(id, dense, sparse, payload)]); store.set_payloads({id: payload}); store.delete(ids)
    store.query(dense, sparse, [Prefetch(DENSE), Prefetch(SPARSE)], limit, k)     # [Hit]: fused by RRF

Each point has two vectors, `dense` (cosine) and `bm25` (sparse, Qdrant's IDF modifier), and keyword payload
indexes on path, module, modules, kind and symbol for the filters.

Locking: an embedded store is opened by one process at a time (Qdrant's own lock); opening one waits up to
`wait_s` (index.lock_wait_s) while another process holds it, then fails with one line.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import qdrant_edge as edge
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from repo2model.core.errors import UserError, first_line
from repo2model.retrieval.index_config import IndexConfig
from repo2model.retrieval.sparse import Sparse

DENSE, SPARSE = "dense", "bm25"


@dataclass
class Hit:
    id: int
    score: float
    payload: dict


@dataclass
class Prefetch:
    """One list of a fused query: `using` dense or bm25, optionally filtered to files/modules."""

    using: str
    files: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()
    weight: float = 1.0


@dataclass
class StoredPoint:
    id: int
    dense: list[float]
    sparse: Sparse
    payload: dict


class EdgeStore:
    """An embedded Qdrant Edge shard in a folder (one process at a time: Qdrant's own lock)."""

    kind = "edge"

    def __init__(self, folder: Path, dim: int | None, wait_s: float):
        self.folder = Path(folder)
        self.dirty = dim is not None  # written to (created, or opened by a writer): flushed on close
        if (self.folder / "wal").exists() or (self.folder / "segments").exists():
            self.shard = _retry_locked(lambda: edge.EdgeShard.load(str(self.folder)), self.folder, wait_s)
        elif dim is None:
            raise UserError(f"{self.folder}: no index here: run the index stage (python index.py)")
        else:
            config = edge.EdgeConfig(
                vectors={DENSE: edge.EdgeVectorParams(size=dim, distance=edge.Distance.Cosine)},
                sparse_vectors={SPARSE: edge.EdgeSparseVectorParams(modifier=edge.Modifier.Idf)})
            self.shard = edge.EdgeShard.create(str(self.folder), config)
            for name in ("path", "module", "modules", "kind", "symbol"):
                self.shard.update(edge.UpdateOperation.create_field_index(name, edge.PayloadSchemaType.Keyword))

    def count(self) -> int:
        return self.shard.count(edge.CountRequest(exact=True))

    def payloads(self, fields: list[str] | None = None) -> dict[int, dict]:
        """Every point's payload (only `fields` of it when given: an update needs no code text)."""
        out, offset = {}, None
        while True:
            records, offset = self.shard.scroll(edge.ScrollRequest(offset=offset, limit=1024, with_payload=fields or True,
                                                                   with_vector=False))
            out.update({int(r.id): r.payload for r in records})
            if offset is None:
                return out

    def vectors(self, ids: list[int]) -> dict[int, tuple[list[float], Sparse]]:
        out = {}
        for record in self.shard.retrieve(list(ids), with_payload=False, with_vector=True):
            vector = record.vector
            sparse = vector[SPARSE]
            out[int(record.id)] = (list(vector[DENSE]), Sparse(list(sparse.indices), list(sparse.values)))
        return out

    def upsert(self, points: list[StoredPoint]) -> None:
        for start in range(0, len(points), 256):
            self.shard.update(edge.UpdateOperation.upsert_points([
                edge.Point(id=p.id, vector={DENSE: p.dense, SPARSE: edge.SparseVector(indices=p.sparse.indices,
                                                                                     values=p.sparse.values)},
                           payload=p.payload) for p in points[start: start + 256]]))

    def set_payloads(self, payloads: dict[int, dict]) -> None:
        for point_id, payload in payloads.items():
            self.shard.update(edge.UpdateOperation.overwrite_payload([point_id], payload))

    def delete(self, ids: list[int]) -> None:
        for start in range(0, len(ids), 1024):
            self.shard.update(edge.UpdateOperation.delete_points(list(ids[start: start + 1024])))

    def by_field(self, key: str, values: list[str], limit: int = 10_000) -> list[dict]:
        if not values:
            return []
        records, _ = self.shard.scroll(edge.ScrollRequest(
            limit=limit, with_payload=True, with_vector=False,
            filter=edge.Filter(must=[edge.FieldCondition(key=key, match=edge.MatchAny(any=list(values)))])))
        return [r.payload for r in records]

    def query(self, dense: list[float] | None, sparse: Sparse | None, prefetches: list[Prefetch], limit: int,
              k: int) -> list[Hit]:
        lists = [p for p in prefetches if (dense if p.using == DENSE else sparse) is not None]
        if not lists:
            return []

        def nearest(p: Prefetch):
            vector = dense if p.using == DENSE else edge.SparseVector(indices=sparse.indices, values=sparse.values)
            return edge.Query.Nearest(vector, using=p.using)

        if len(lists) == 1 and not (lists[0].files or lists[0].modules):
            request = edge.QueryRequest(limit=limit, query=nearest(lists[0]), with_payload=True)
        else:
            request = edge.QueryRequest(
                limit=limit, with_payload=True, query=edge.Fusion.Rrf(k=k, weights=[p.weight for p in lists]),
                prefetches=[edge.Prefetch(limit=limit, query=nearest(p), filter=self._filter(p)) for p in lists])
        return [Hit(int(point.id), float(point.score), point.payload) for point in self.shard.query(request)]

    @staticmethod
    def _filter(p: Prefetch):
        should = []
        if p.files:
            should.append(edge.FieldCondition(key="path", match=edge.MatchAny(any=list(p.files))))
        if p.modules:
            should.append(edge.FieldCondition(key="modules", match=edge.MatchAny(any=list(p.modules))))
        return edge.Filter(should=should) if should else None

    def close(self) -> None:
        if self.shard is not None:
            if self.dirty:  # a reader has nothing to flush (a flush costs fsyncs)
                self.shard.flush()
            self.shard.close()
            self.shard = None


class ClientStore:
    """A collection through qdrant-client: a Qdrant server (`url`), or qdrant-client's local mode (a folder).

    Both go through the same calls; the local mode is how the tests exercise the server's code path.
    """

    kind = "client"

    def __init__(self, client: QdrantClient, collection: str, dim: int | None, where: str):
        self.client, self.collection, self.where = client, collection, where
        try:
            exists = client.collection_exists(collection)
        except Exception as exc:  # connection refused, DNS, TLS, 401: one line naming the server
            raise UserError(f"cannot reach Qdrant at {where}: {first_line(exc)} (is the server running? "
                            "see index.url and index.api_key_env)") from None
        if not exists:
            if dim is None:
                raise UserError(f"{where}: no collection '{collection}': run the index stage (python index.py)")
            client.create_collection(collection, vectors_config={DENSE: qm.VectorParams(size=dim,
                                                                                         distance=qm.Distance.COSINE)},
                                     sparse_vectors_config={SPARSE: qm.SparseVectorParams(modifier=qm.Modifier.IDF)})
            if where.startswith(("http://", "https://")):  # local mode has no payload indexes (it warns)
                for name in ("path", "module", "modules", "kind", "symbol"):
                    client.create_payload_index(collection, name, qm.PayloadSchemaType.KEYWORD)

    @classmethod
    def server(cls, cfg: IndexConfig, dim: int | None) -> ClientStore:
        key = os.environ.get(cfg.api_key_env) or None
        client = QdrantClient(url=cfg.url, api_key=key, timeout=int(cfg.timeout_s), check_compatibility=False)
        return cls(client, cfg.collection, dim, cfg.url)

    @classmethod
    def local(cls, folder: Path, collection: str, dim: int | None, wait_s: float) -> ClientStore:
        if dim is None and not (Path(folder) / "collection" / collection).exists():
            raise UserError(f"{folder}: no index here: run the index stage (python index.py)")
        client = _retry_locked(lambda: QdrantClient(path=str(folder)), Path(folder), wait_s)
        return cls(client, collection, dim, str(folder))

    def count(self) -> int:
        return self.client.count(self.collection, exact=True).count

    def payloads(self, fields: list[str] | None = None) -> dict[int, dict]:
        """Every point's payload (only `fields` of it when given)."""
        out, offset = {}, None
        while True:
            records, offset = self.client.scroll(self.collection, limit=1024, offset=offset,
                                                 with_payload=fields or True, with_vectors=False)
            out.update({int(r.id): r.payload for r in records})
            if offset is None:
                return out

    def vectors(self, ids: list[int]) -> dict[int, tuple[list[float], Sparse]]:
        out = {}
        for record in self.client.retrieve(self.collection, list(ids), with_payload=False, with_vectors=True):
            sparse = record.vector[SPARSE]
            out[int(record.id)] = (list(record.vector[DENSE]), Sparse(list(sparse.indices), list(sparse.values)))
        return out

    def upsert(self, points: list[StoredPoint]) -> None:
        for start in range(0, len(points), 256):
            self.client.upsert(self.collection, [
                qm.PointStruct(id=p.id, payload=p.payload, vector={
                    DENSE: p.dense, SPARSE: qm.SparseVector(indices=p.sparse.indices, values=p.sparse.values)})
                for p in points[start: start + 256]])

    def set_payloads(self, payloads: dict[int, dict]) -> None:
        for point_id, payload in payloads.items():
            self.client.overwrite_payload(self.collection, payload=payload, points=[point_id])

    def delete(self, ids: list[int]) -> None:
        for start in range(0, len(ids), 1024):
            self.client.delete(self.collection, points_selector=qm.PointIdsList(points=list(ids[start: start + 1024])))

    def by_field(self, key: str, values: list[str], limit: int = 10_000) -> list[dict]:
        if not values:
            return []
        records, _ = self.client.scroll(self.collection, limit=limit, with_payload=True, with_vectors=False,
                                        scroll_filter=qm.Filter(must=[qm.FieldCondition(
                                            key=key, match=qm.MatchAny(any=list(values)))]))
        return [r.payload for r in records]

    def query(self, dense: list[float] | None, sparse: Sparse | None, prefetches: list[Prefetch], limit: int,
              k: int) -> list[Hit]:
        lists = [p for p in prefetches if (dense if p.using == DENSE else sparse) is not None]
        if not lists:
            return []

        def vector(p: Prefetch):
            return dense if p.using == DENSE else qm.SparseVector(indices=sparse.indices, values=sparse.values)

        if len(lists) == 1 and not (lists[0].files or lists[0].modules):
            points = self.client.query_points(self.collection, query=vector(lists[0]), using=lists[0].using,
                                              limit=limit, with_payload=True).points
        else:
            points = self.client.query_points(
                self.collection, limit=limit, with_payload=True,
                prefetch=[qm.Prefetch(query=vector(p), using=p.using, limit=limit, filter=self._filter(p))
                          for p in lists],
                query=qm.RrfQuery(rrf=qm.Rrf(k=k, weights=[p.weight for p in lists]))).points
        return [Hit(int(point.id), float(point.score), point.payload) for point in points]

    @staticmethod
    def _filter(p: Prefetch):
        should = []
        if p.files:
            should.append(qm.FieldCondition(key="path", match=qm.MatchAny(any=list(p.files))))
        if p.modules:
            should.append(qm.FieldCondition(key="modules", match=qm.MatchAny(any=list(p.modules))))
        return qm.Filter(should=should) if should else None

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


def _retry_locked(open_store: Callable[[], Any], folder: Path, wait_s: float):
    """Open an embedded store, waiting up to `wait_s` while another process holds it."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return open_store()
        except Exception as exc:  # Qdrant Edge: "WouldBlock"; qdrant-client local mode: "already accessed"
            message = str(exc)
            if "WouldBlock" not in message and "already accessed" not in message:
                raise
            if time.monotonic() >= deadline:
                raise UserError(f"{folder}: the index is in use by another process (index.py or serve.py) "
                                f"for over {wait_s:.0f}s: try again when it is done") from None
            time.sleep(0.1)
