"""A farm whose artifact store is S3 (a moto server on 127.0.0.1): workers write and read only through it."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from unittest import mock

import boto3  # type: ignore[import-untyped]
import redis

from farm.config.settings import Settings
from farm.episode.validate import load_episode
from farm.ops.supervisor import start_farm, stop_farm
from farm.planning.plan import build_plan
from farm.runs import dispatch
from farm.runs.progress import snapshot
from farm.runs.state import RunStore
from tasks.app import make_app
from tasks.sender import CelerySender
from tests.conftest import MOTO_BUCKET, Doc
from tests.support.ports import free_port


def test_a_run_stores_every_output_in_s3(
    moto_endpoint: str, tmp_path: Path, sample_doc: Doc, registry_doc: Doc
) -> None:
    small = {**sample_doc, "shots": [s for s in sample_doc["shots"] if s["shot"] in (1, 6)]}
    (tmp_path / "storyboard.json").write_text(json.dumps(small))
    (tmp_path / "lora_registry.json").write_text(json.dumps(registry_doc))
    plan = build_plan(load_episode(tmp_path / "storyboard.json"))
    prefix = f"farm-{uuid.uuid4().hex[:8]}"
    env = {
        "FARM_HOME": str(tmp_path / "home"),
        "FARM_STORE": "s3",
        "FARM_S3_BUCKET": MOTO_BUCKET,
        "FARM_S3_PREFIX": prefix,
        "FARM_S3_ENDPOINT_URL": moto_endpoint,
    }
    with mock.patch.dict(os.environ, env):
        farm = start_farm(
            Settings(),
            queues=("post",),
            flower=False,
            redis_port=free_port(),
            private_dir=tmp_path / "private",
        )
    try:
        runs = RunStore(redis.Redis.from_url(farm.broker_url))
        run_id = dispatch.submit(
            runs,
            CelerySender(make_app(farm.broker_url)),
            plan,
            backend="local",
            namespace="embedded",
            output=tmp_path / "out",
            storyboard="small.json",
        )
        deadline = time.monotonic() + 120
        while not snapshot(runs, run_id).finished:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert runs.meta(run_id)["status"] == "succeeded"
    finally:
        stop_farm(farm)
    listed = (
        boto3.session.Session()
        .client("s3", endpoint_url=moto_endpoint)
        .list_objects_v2(Bucket=MOTO_BUCKET, Prefix=prefix)
    )
    keys = {item["Key"] for item in listed.get("Contents", [])}
    assert {f"{prefix}/embedded/{s.id[:2]}/{s.id}/0{Path(s.asset_name).suffix}" for s in plan.steps} <= keys
    assert f"{prefix}/embedded/runs/{run_id}/manifest.json" in keys
    manifest = json.loads((tmp_path / "out" / "leviathan" / "ep_001" / "manifest.json").read_text())
    assert all(
        o["store"].startswith(f"s3://{MOTO_BUCKET}/{prefix}/")
        for s in manifest["steps"]
        for o in s["outputs"]
    )
