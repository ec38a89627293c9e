"""A vfl.blindfl job whose parties talk mutual TLS with the certificates its spec names, through the scheduler;
an outsider's certificate fails the job at once, without restarts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from test_scheduler import done, failed_without_restart, wait_for
from test_vfl_session import _vfl_job


@pytest.fixture(scope="module")
def party_tls(party_certs):
    """Spec entries (tls_cert, tls_key, tls_ca) for the federation's parties, and f1 with an outsider's certificate."""
    return {k: {"tls_cert": party_certs[k].cert, "tls_key": party_certs[k].key, "tls_ca": party_certs[k].ca}
            for k in ("label", "f1", "f1-rogue-cert")}


@pytest.mark.parametrize("feature_tls", ["f1", "f1-rogue-cert"])
def test_a_vfl_job_over_mutual_tls_from_its_spec(tmp_path, scheduler_factory, party_tls, feature_tls):
    """Every party's certificate, key and CA come from the job spec; a feature party whose certificate the
    federation's CA did not issue is refused by the label party, and the job fails at once (a restart would be
    refused again)."""
    parties = [{"name": "label", "role": "label", **party_tls["label"]},
               {"name": "f1", "role": "feature", **party_tls[feature_tls]}]
    job = _vfl_job("vfl-tls", parties, generate="breast_cancer")
    sched = scheduler_factory()
    with sched.client() as client:
        status = client.submit(yaml.safe_dump(job), "local", str(tmp_path))
        if feature_tls == "f1":
            status = wait_for(client, status.job_id, done, timeout=120)
            result = json.loads((Path(status.run_dir) / "results" / "worker-0.json").read_text())
            assert result["party"] == "label" and result["accuracy"] > 0.8, result
            assert status.restarts == 0
            return
        status = failed_without_restart(client, status.job_id)
    assert re.search(r"worker-0 failed with an input error that a restart would repeat \(not restarted\): "
                     r"PartyMessageRejected: party 'f1' at 127\.0\.0\.1:\d+ presented a TLS certificate that fails "
                     r"verification against our CA .*ca\.pem", status.reason), status.reason
