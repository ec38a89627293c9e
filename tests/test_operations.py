"""The scheduler's HTTP port with a real job: Prometheus /metrics parsed with prometheus_client's parser, the
dashboard's API behind the token, and the dashboard rendered by a headless Chromium (skipped without one)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from collections import defaultdict

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from conftest import SchedulerUnderTest, kill_schedulers
from test_scheduler import done, tiny_job, wait_for

STEPS = 20
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


@pytest.fixture(scope="module")
def finished_job(tmp_path_factory):
    """One CTR job (2 PS, 2 workers) run to its end on a scheduler that serves HTTP; its final status."""
    root = tmp_path_factory.mktemp("operations")
    sched = SchedulerUnderTest(root / "sched", heartbeat_timeout_s=5.0, http_port=0)
    try:
        with sched.client() as client:
            job_id = client.submit(yaml.safe_dump(tiny_job("ops", steps=STEPS)), "local", str(root)).job_id
            wait_for(client, job_id, done)
            # every process's last heartbeat (it carries its final metrics) has arrived once all say DONE
            status = wait_for(client, job_id, lambda s: all(n.state == "DONE" for n in s.nodes))
        yield sched, status
    finally:
        kill_schedulers([sched])


def get(sched: SchedulerUnderTest, path: str, token: str | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://127.0.0.1:{sched.http_port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def samples(text: str) -> dict[str, list]:
    """Every sample of the scrape by sample name (a histogram's _bucket, _count, _sum apart)."""
    out: dict[str, list] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name].append(sample)
    return out


def total(found: dict[str, list], name: str, **labels: str) -> float:
    return sum(s.value for s in found[name] if all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_cover_the_job_its_ps_shards_and_workers_and_both_sides_agree(finished_job):
    sched, status = finished_job
    assert get(sched, "/metrics")[0] == 401
    assert get(sched, "/metrics", token="wrong")[0] == 401
    code, body = get(sched, "/metrics", token=sched.token)
    assert code == 200
    found = samples(body.decode())
    job = {"job_id": status.job_id}

    assert total(found, "seraphim_job_state", **job, state="SUCCEEDED") == 1
    assert total(found, "seraphim_jobs", state="SUCCEEDED") == 1
    assert total(found, "seraphim_job_step", **job) == STEPS == total(found, "seraphim_job_total_steps", **job)
    assert total(found, "seraphim_job_restarts_total", **job) == 0
    for rank in ("0", "1"):
        assert total(found, "seraphim_worker_steps_total", **job, rank=rank) == STEPS
        assert total(found, "seraphim_ps_min_clock", **job, rank=rank) == STEPS
        assert total(found, "process_resident_memory_bytes", **job, role="ps", rank=rank) > 0
        assert total(found, "process_resident_memory_bytes", **job, role="worker", rank=rank) > 0
        # the page counts add up to the RAM tier's use
        page_bytes = (total(found, "seraphim_ps_ram_used_bytes", **job, rank=rank)
                      / max(total(found, "seraphim_ps_pages_resident", **job, rank=rank), 1))
        assert page_bytes == 64 * 1024
    assert total(found, "process_resident_memory_bytes", role="scheduler") > 0

    # every call a worker made was served by a PS and counted there: same counts, same bytes
    for method in ("Pull", "Push", "Clock"):
        calls = total(found, "seraphim_worker_rpc_seconds_count", **job, method=method)
        assert calls > 0 and calls == total(found, "seraphim_ps_rpc_seconds_count", **job, method=method), method
        assert total(found, "seraphim_worker_rpc_seconds_bucket", **job, method=method, le="+Inf") == calls
    assert (total(found, "seraphim_worker_rpc_received_bytes_total", **job, method="Pull")
            == total(found, "seraphim_ps_rpc_sent_bytes_total", **job, method="Pull") > 0)
    assert (total(found, "seraphim_worker_rpc_sent_bytes_total", **job, method="Push")
            == total(found, "seraphim_ps_rpc_received_bytes_total", **job, method="Push") > 0)
    pulled = total(found, "seraphim_ps_pulled_rows_total", **job, table="ctr_lr_w")
    assert pulled > 0 and total(found, "seraphim_ps_pulled_bytes_total", **job, table="ctr_lr_w") == 4 * pulled
    ratios = [s.value for s in found["seraphim_ps_page_hit_ratio"] if s.labels["table"] == "ctr_lr_w"]
    assert len(ratios) == 2 and all(0.5 < r <= 1.0 for r in ratios), ratios


def test_dashboard_api_needs_the_token_and_names_what_is_missing(finished_job):
    sched, status = finished_job
    code, body = get(sched, "/api/jobs")
    assert code == 401 and "cluster token" in json.loads(body)["error"]
    code, body = get(sched, "/api/jobs/nope-123", token=sched.token)
    assert code == 404 and "no job 'nope-123'" in json.loads(body)["error"]
    code, body = get(sched, f"/api/jobs/{status.job_id}/logs?offset=x", token=sched.token)
    assert code == 400 and "offset 'x'" in json.loads(body)["error"]
    code, body = get(sched, f"/api/jobs/{status.job_id}/logs?source=job&offset=0", token=sched.token)
    log = json.loads(body)
    assert code == 200 and "job SUCCEEDED" in log["text"] and log["offset"] == len(log["text"].encode())
    again = json.loads(get(sched, f"/api/jobs/{status.job_id}/logs?source=job&offset={log['offset']}",
                           token=sched.token)[1])
    assert again["offset"] >= log["offset"] and "submitted" not in again["text"]  # follow: only what is new


def _browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


@pytest.mark.skipif(_browser() is None, reason=f"no headless browser installed (looked for {', '.join(BROWSERS)}; "
                                               "`apt-get install -y chromium`)")
def test_dashboard_renders_the_job_in_a_real_browser(finished_job, tmp_path):
    sched, status = finished_job
    url = f"http://127.0.0.1:{sched.http_port}/#token={sched.token}&job={status.job_id}"
    flags = [_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--virtual-time-budget=4000", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=60).stdout
    jobs_row = re.search(rf'<tr data-job="{status.job_id}"[^>]*>(.*?)</tr>', dom, re.S)
    assert jobs_row and "SUCCEEDED" in jobs_row.group(1) and f"{STEPS}/{STEPS}" in jobs_row.group(1), dom[:2000]
    for n in status.nodes:
        assert re.search(rf"<td>{n.role}-{n.rank}</td><td>[A-Z]+</td><td>{n.host}</td><td[^>]*>{n.pid}</td>", dom)
    chart = re.search(r'<svg[^>]*data-metric="train_loss".*?</svg>', dom, re.S)
    assert chart and chart.group(0).count("<polyline") == 2
    points = re.search(r'data-worker="0" points="([^"]+)"', chart.group(0)).group(1).split()
    assert len(points) == STEPS
    for shard in (0, 1):
        assert f'<tr data-shard="{shard}" data-table="ctr_lr_w">' in dom
    assert "job SUCCEEDED" in re.search(r'<pre id="log">(.*?)</pre>', dom, re.S).group(1)

    shot = tmp_path / "dashboard.png"
    subprocess.run([*flags, "--window-size=1400,1900", f"--screenshot={shot}", url], capture_output=True,
                   timeout=60)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    print(f"dashboard screenshot: {shot}")
