"""Scale-out benchmark: masking one landing month, split into shards, on 1 vs 2 Celery workers.

    python bench/bench_cluster.py --out bench/results/cluster.json                 # 8,000 records (~20 min, 2 cores)
    python bench/bench_cluster.py --records 1200 --shard-rows 300 --out /tmp/c.json  # smoke run
    python bench/bench_cluster.py --render bench/results/cluster.json               # the Markdown again

One `make cluster` (tasks/cluster: Postgres, Redis, S3, MLflow server, Airflow on the CeleryExecutor) on a
fresh home with one generated month of --records records (tasks.demo.synth). Each trial triggers
`privacy_finetune` with `mask.shard_rows` --shard-rows and one masking process per task, waits until every
`mask_shard` task instance succeeded, and stops the run there (nothing after masking is measured). The
masking wall time is the span from the first shard's start to the last shard's end, as the scheduler
recorded them. Trials alternate 2 workers / 1 worker (the `gpu` worker, which also consumes `default`,
stopped for the 1-worker trials), --repeats times each, all in this one run, so the ratio compares
like with like on the same machine state.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tasks.cluster import control  # noqa: E402
from tasks.cluster import services as svc  # noqa: E402
from tasks.cluster.topology import Cluster  # noqa: E402

DAG_ID = "privacy_finetune"


class Api:
    """The few REST calls the benchmark makes, as the cluster's admin."""

    def __init__(self, cluster: Cluster):
        self.base = cluster.api_url
        token = httpx.post(
            f"{self.base}/auth/token", json={"username": "admin", "password": cluster.settings.admin_password}
        ).json()["access_token"]
        self.headers = {"Authorization": f"Bearer {token}"}

    def call(self, method: str, path: str, **kwargs):
        resp = httpx.request(method, f"{self.base}/api/v2{path}", headers=self.headers, timeout=30, **kwargs)
        resp.raise_for_status()
        return resp.json() if resp.content else None

    def wait_for_dag(self, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                self.call("GET", f"/dags/{DAG_ID}/details")
                return
            except httpx.HTTPError:
                time.sleep(2)
        raise TimeoutError(f"{DAG_ID} not parsed in {timeout_s:.0f} s")

    def task_instances(self, run_id: str, task_id: str) -> list[dict]:
        tis = self.call("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances", params={"limit": 1000})
        return [ti for ti in tis["task_instances"] if ti["task_id"] == task_id]


def _config(home: Path, shard_rows: int) -> Path:
    cfg = yaml.safe_load((REPO / "include" / "config" / "pipeline.yaml").read_text())
    cfg["mask"].update({"workers": 1, "shard_rows": shard_rows})
    cfg["base_model"].update({"size": "tiny"})
    cfg["registry"]["require_approval"] = False
    path = home / "bench-cluster.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def _masking_done(api: Api, run_id: str, timeout_s: float) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        shards = api.task_instances(run_id, "mask_shard")
        states = [ti["state"] for ti in shards]
        if shards and all(s == "success" for s in states):
            return shards
        if any(s in ("failed", "upstream_failed") for s in states):
            raise RuntimeError(f"{run_id}: a masking shard failed: {states}")
        time.sleep(2)
    raise TimeoutError(f"{run_id}: masking not done in {timeout_s:.0f} s")


def trial(cluster: Cluster, api: Api, workers: int, label: str, timeout_s: float) -> dict:
    """One run of the DAG up to the end of masking, on `workers` Celery workers."""
    if workers == 1:
        svc.daemon(cluster, "gpu-worker").stop(grace_s=60)
    else:
        control.start_worker(cluster, "gpu")
    run_id = api.call("POST", f"/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "dag_run_id": label})["dag_run_id"]
    shards = _masking_done(api, run_id, timeout_s)
    api.call("PATCH", f"/dags/{DAG_ID}/dagRuns/{run_id}", json={"state": "failed"})  # masking is all we measure
    starts, ends = [_parse(ti["start_date"]) for ti in shards], [_parse(ti["end_date"]) for ti in shards]
    per_worker: dict[str, int] = {}
    for ti in shards:
        per_worker[ti["hostname"]] = per_worker.get(ti["hostname"], 0) + 1
    return {
        "label": label,
        "workers": workers,
        "shards": len(shards),
        "masking_wall_s": round((max(ends) - min(starts)).total_seconds(), 1),
        "shard_task_s_sum": round(sum((e - s).total_seconds() for s, e in zip(starts, ends)), 1),
        "shards_per_worker": per_worker,
    }


def run(args) -> dict:
    home = Path(args.work or tempfile.mkdtemp(prefix="pft-bench-cluster-"))
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o711)  # Postgres runs as its own OS user under root and must reach its folder
    subprocess.run(
        [sys.executable, "-m", "tasks.demo.synth", "--home", str(home), "--records", str(args.records)],
        cwd=REPO, check=True, capture_output=True, env={**os.environ, "PFT_HOME": str(home)},
    )  # fmt: skip
    cluster = Cluster.at(home)
    cluster.settings.pft_config = str(_config(home, args.shard_rows))
    cluster.settings.save(cluster.state)
    started = time.monotonic()
    try:
        control.up(cluster)
        up_s = time.monotonic() - started
        api = Api(cluster)
        api.wait_for_dag()
        api.call("PATCH", f"/dags/{DAG_ID}", json={"is_paused": False})
        trials = []
        for i in range(args.repeats):
            for workers in (2, 1):
                trials.append(trial(cluster, api, workers, f"bench-{workers}w-{i}", args.timeout))
                print(json.dumps(trials[-1]), flush=True)
    finally:
        control.down(cluster)
    return summarise(args, trials, up_s)


def summarise(args, trials: list[dict], up_s: float) -> dict:
    walls = {w: [t["masking_wall_s"] for t in trials if t["workers"] == w] for w in (1, 2)}
    pairs = [one / two for one, two in zip(walls[1], walls[2])]
    return {
        "command": f"python bench/bench_cluster.py --records {args.records} --shard-rows {args.shard_rows} "
        f"--repeats {args.repeats} --out {args.out}",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "when": datetime.now().astimezone().isoformat(timespec="seconds"),
        "records": args.records,
        "shard_rows": args.shard_rows,
        "cluster_up_s": round(up_s, 1),
        "trials": trials,
        "median_wall_s": {f"{w}_worker{'s' if w > 1 else ''}": statistics.median(v) for w, v in walls.items()},
        "speedup_per_pair": [round(p, 2) for p in pairs],
        "speedup": round(statistics.median(walls[1]) / statistics.median(walls[2]), 2),
    }


def render(result: dict) -> str:
    lines = [
        "# Masking scale-out: 1 vs 2 Celery workers",
        "",
        f"`{result['command']}` on {result['machine']['cpus']} CPUs, {result['when']}.",
        f"One landing month of {result['records']:,} records in shards of at most {result['shard_rows']:,} rows; "
        "one masking process per task; the masking wall time is the first shard's start to the last shard's end.",
        "",
        "| trial | workers | shards | masking wall (s) | sum of shard tasks (s) | shards per worker |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for t in result["trials"]:
        per = ", ".join(f"{k}: {v}" for k, v in sorted(t["shards_per_worker"].items()))
        lines.append(
            f"| {t['label']} | {t['workers']} | {t['shards']} | {t['masking_wall_s']} | {t['shard_task_s_sum']} | {per} |"
        )
    lines += ["", f"**Speed-up, 2 workers vs 1: {result['speedup']}×** (per pair: {result['speedup_per_pair']})."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=8000)
    parser.add_argument("--shard-rows", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one trial's masking may take")
    parser.add_argument("--work", help="the cluster's home (default: a new temporary folder)")
    parser.add_argument("--out", default="bench/results/cluster.json")
    parser.add_argument("--render", help="print the Markdown of an existing results JSON")
    args = parser.parse_args(argv)
    if args.render:
        print(render(json.loads(Path(args.render).read_text())), end="")
        return 0
    result = run(args)
    out = Path(args.out)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(render(result))
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
