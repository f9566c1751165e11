"""The control plane's API against SQLite and a real PostgreSQL: auth, every route's answers,
idempotent ingestion, migrations; and a schemathesis run over its OpenAPI spec."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from warpdrive.control.api import create_app
from warpdrive.control.db import Store

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(database_url: str) -> Iterator[TestClient]:
    store = Store(database_url)
    with TestClient(create_app(store, TOKEN)) as c:
        yield c
    store.engine.dispose()


def beat(
    node: str = "gpu-1", hits: int = 10, misses: int = 10, teams: dict[str, int] | None = None
) -> dict:
    return {"node": node, "mount_point": "/wd", "cache_bytes": 500, "max_size": 1000, "hits": hits,
            "misses": misses, "healthy": True, "backends": {"datasets-cac": True}, "teams": teams or {}}  # fmt: skip


def record(
    key: str, user: str, team: str | None, nbytes: int, cached: int, ts: float = 1_700_000_000.0
) -> dict:
    return {"backend": "datasets-cac", "key": key, "user": user, "team": team, "day": "2026-11-24",
            "bytes": nbytes, "cache_bytes": cached, "opens": 1, "last_ts": ts}  # fmt: skip


def test_writes_need_the_token_and_reads_are_open(client: TestClient, database_url: str) -> None:
    assert client.post("/api/v1/nodes/heartbeat", json=beat()).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert client.post("/api/v1/nodes/heartbeat", json=beat(), headers=wrong).status_code == 401
    assert client.post("/api/v1/nodes/heartbeat", json=beat(), headers=AUTH).status_code == 200
    assert client.get("/api/v1/nodes").status_code == 200
    store = Store(database_url)
    with TestClient(create_app(store, TOKEN, private_reads=True)) as private:
        assert private.get("/api/v1/nodes").status_code == 401
        assert private.get("/api/v1/nodes", headers=AUTH).json()[0]["node"] == "gpu-1"
    store.engine.dispose()


def test_nodes_and_hit_rate_over_time(client: TestClient) -> None:
    client.post("/api/v1/nodes/heartbeat", json=beat(hits=10, misses=10), headers=AUTH)
    client.post("/api/v1/nodes/heartbeat", json=beat(hits=100, misses=10), headers=AUTH)
    (node,) = client.get("/api/v1/nodes").json()
    assert node["node"] == "gpu-1" and node["utilization"] == 0.5 and node["healthy"]
    assert node["hit_rate"] == pytest.approx(100 / 110) and node["seconds_since_seen"] < 60
    assert node["backends"] == {"datasets-cac": True}
    (point,) = client.get("/api/v1/nodes/hit-rate?hours=1").json()
    assert point["hit_rate"] == 1.0  # 90 more hits, no more misses between the two samples


def test_ingest_is_idempotent_and_usage_groups(client: TestClient) -> None:
    batch = {"node": "gpu-1", "records": [record("a.tar", "alice", "vision", 100, 25),
                                          record("b.tar", "bob", None, 300, 300)]}  # fmt: skip
    for _ in range(2):  # a resend after an outage replaces, it does not add
        assert client.post("/api/v1/ingest", json=batch, headers=AUTH).json() == {"accepted": 2}
    assert (
        client.post("/api/v1/team", json={"user": "bob", "team": "nlp"}, headers=AUTH).status_code
        == 200
    )
    teams = {r["group"]: r for r in client.get("/api/v1/usage?group_by=team").json()}
    assert teams["vision"]["bytes_read"] == 100 and teams["vision"]["hit_ratio"] == 0.25
    assert teams["nlp"]["bytes_read"] == 300  # bob's records had no team: the central mapping
    users = client.get("/api/v1/usage?group_by=user").json()
    assert [(u["group"], u["files_accessed"]) for u in users] == [("bob", 1), ("alice", 1)]
    assert client.get("/api/v1/usage?group_by=backend&backend=other").json() == []
    later = {
        "node": "gpu-1",
        "records": [record("a.tar", "alice", "vision", 400, 325, ts=1_700_000_100.0)],
    }
    client.post("/api/v1/ingest", json=later, headers=AUTH)
    alice = client.get("/api/v1/user/alice").json()
    assert alice == {"user": "alice", "team": "vision", "bytes_read": 400, "files_accessed": 1,
                     "hit_ratio": 325 / 400, "last_access": 1_700_000_100.0,
                     "by_backend": {"datasets-cac": 400}}  # fmt: skip
    assert client.get("/api/v1/user/nobody").status_code == 404
    bad = {"node": "gpu-1", "records": [{**record("c", "u", None, 1, 1), "day": "yesterday"}]}
    assert client.post("/api/v1/ingest", json=bad, headers=AUTH).status_code == 422


def test_quotas_are_set_centrally_and_reach_the_heartbeat(client: TestClient) -> None:
    put = client.put(
        "/api/v1/quota", json={"team": "vision", "soft": 100, "hard": 200}, headers=AUTH
    )
    assert put.json()["status"] == "OK" and put.json()["backend"] == "*"
    assert (
        client.put(
            "/api/v1/quota", json={"team": "x", "soft": 9, "hard": 1}, headers=AUTH
        ).status_code
        == 422
    )
    reply = client.post(
        "/api/v1/nodes/heartbeat", json=beat(teams={"vision": 150}), headers=AUTH
    ).json()
    assert reply["quotas"] == [{"team": "vision", "backend": "*", "soft": 100, "hard": 200}]
    (quota,) = client.get("/api/v1/quota").json()
    assert quota["usage_bytes"] == 150 and quota["status"] == "WARNING"
    client.post("/api/v1/nodes/heartbeat", json=beat("gpu-2", teams={"vision": 250}), headers=AUTH)
    assert client.get("/api/v1/quota").json()[0]["status"] == "EXCEEDED"


def test_crawl_stale_growth_backends(client: TestClient) -> None:
    old = time.time() - 200 * 86400
    objects = [{"key": "old.tar", "size": 5_000_000, "mtime": old}, {"key": "new.tar", "size": 10, "mtime": time.time()},
               {"key": "read.tar", "size": 7_000_000, "mtime": old}]  # fmt: skip
    reply = client.post(
        "/api/v1/crawl", json={"backend": "datasets-cac", "objects": objects}, headers=AUTH
    )
    assert reply.json() == {"backend": "datasets-cac", "objects": 3, "bytes": 12_000_010}
    client.post(
        "/api/v1/ingest",
        json={"node": "n", "records": [record("read.tar", "a", None, 1, 0, ts=time.time())]},
        headers=AUTH,
    )
    stale = client.get("/api/v1/stale?days=90").json()
    assert [s["key"] for s in stale] == ["old.tar"]  # read.tar was read; new.tar is new
    assert client.get("/api/v1/stale?days=90&min_size=6000000").json() == []
    growth = client.get("/api/v1/growth?backend=datasets-cac&period=week").json()
    assert [(g["objects"], g["bytes"]) for g in growth] == [(3, 12_000_010)]
    (backend,) = client.get("/api/v1/backends").json()
    assert backend["objects"] == 3 and backend["bytes_read"] == 1


def test_jobs_newest_first(client: TestClient) -> None:
    for i in range(3):
        job = {"job_id": f"j{i}", "node": "gpu-1", "user": "alice", "status": 0, "started_at": 1.0,
               "finished_at": 10.0 + i, "hits": i, "misses": 1, "bytes_fetched": 100}  # fmt: skip
        assert client.post("/api/v1/jobs", json=job, headers=AUTH).status_code == 200
    assert [j["job_id"] for j in client.get("/api/v1/jobs?limit=2").json()] == ["j2", "j1"]


def test_migrations_are_recorded_and_rerun_safely(database_url: str) -> None:
    first = Store(database_url)
    again = Store(database_url)
    assert first.version == again.version >= 1
    with TestClient(create_app(again, TOKEN)) as c:
        assert c.get("/healthz").json() == {"status": "ok", "schema_version": again.version}
        assert "WarpDrive control plane" in c.get("/").text
    first.engine.dispose()
    again.engine.dispose()


def test_openapi_documents_every_field_in_snake_case(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = set(spec["paths"])
    assert {"/api/v1/usage", "/api/v1/stale", "/api/v1/growth", "/api/v1/quota", "/api/v1/user/{user_id}",
            "/api/v1/backends", "/api/v1/ingest", "/api/v1/crawl", "/api/v1/team", "/api/v1/nodes/heartbeat",
            "/api/v1/jobs", "/api/v1/nodes"} <= paths  # fmt: skip
    for name, schema in spec["components"]["schemas"].items():
        for field in schema.get("properties", {}):
            assert field == field.lower() and "-" not in field, (name, field)


def test_every_number_the_api_takes_is_bounded(client: TestClient) -> None:
    # An unbounded integer reached the database as 2**63 and failed there (a 500), not as a 422.
    spec = client.get("/openapi.json").json()

    def numbers(schema: dict, where: str) -> Iterator[tuple[str, dict]]:
        if "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[1]
            yield from numbers(spec["components"]["schemas"][name], name)
        for key in ("anyOf", "allOf", "oneOf"):
            for sub in schema.get(key, []):
                yield from numbers(sub, where)
        for name, sub in schema.get("properties", {}).items():
            yield from numbers(sub, f"{where}.{name}")
        for key in ("items", "additionalProperties"):
            if isinstance(schema.get(key), dict):
                yield from numbers(schema[key], f"{where}[]")
        if schema.get("type") in ("integer", "number"):
            yield where, schema

    found = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            found += numbers(body.get("schema", {}), f"{method} {path}")
            for param in op.get("parameters", []):
                found += numbers(param["schema"], f"{method} {path}?{param['name']}")
    assert len(found) > 20
    for where, schema in found:
        assert 0 < schema.get("maximum", schema.get("exclusiveMaximum", 2**64)) <= 2**53, where

    too_big = beat() | {"misses": 2**63}
    answer = client.post("/api/v1/nodes/heartbeat", json=too_big, headers=AUTH)
    assert answer.status_code == 422 and "misses" in answer.text


def test_a_key_twice_in_one_write(client: TestClient) -> None:
    # A listing can't hold a key twice: a clear 422 (it was a UNIQUE-constraint 500).
    twice = {"backend": "datasets-cac", "objects": [{"key": "train/a.tar", "size": 1, "mtime": 0},
                                                    {"key": "train/a.tar", "size": 2, "mtime": 0}]}  # fmt: skip
    answer = client.post("/api/v1/crawl", json=twice, headers=AUTH)
    assert answer.status_code == 422 and "'train/a.tar' is listed twice" in answer.text
    # Access figures are cumulative: the later record of the same key, user and day wins.
    batch = [
        record("train/a.tar", "ana", "vision", 10, 0),
        record("train/a.tar", "ana", "vision", 30, 5),
    ]
    answer = client.post("/api/v1/ingest", json={"node": "gpu-1", "records": batch}, headers=AUTH)
    assert answer.status_code == 200, answer.text
    (row,) = client.get("/api/v1/usage?group_by=user").json()
    assert (row["group"], row["bytes_read"], row["files_accessed"]) == ("ana", 30, 1)
