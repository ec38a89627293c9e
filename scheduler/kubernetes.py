"""Kubernetes objects for the scheduler and for one job, built as plain dicts so they need no cluster to render.

The objects are built here in Python rather than read from template files so that they work from an installed
wheel (``deploy/`` is not part of the package) and so that every conditional part (TLS, storage class) is
ordinary code. ``deploy/kubernetes/`` holds their rendered form; ``python -m seraphim.scheduler.kubernetes``
prints them and a test fails when those files are stale.

A job is a headless Service plus a StatefulSet of PS shards (stable names, one volume per shard, the shard taken
from the pod ordinal) and an Indexed Job of workers (the rank is the completion index). Every object carries the
labels ``app.kubernetes.io/name=seraphim``, ``seraphim/job=<job label>`` and ``seraphim/role``, so
``kubectl delete statefulset,job,service,pvc -l seraphim/job=<job label>`` removes a job with its volumes.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import re
import sys
from typing import Any

import yaml

from seraphim.scheduler.job_spec import JobSpec, load_job

APP = "seraphim"
SCHEDULER_NAME = "seraphim-scheduler"
SCHEDULER_PORT = 7070
# The scheduler's dashboard and /metrics, which carry every PS's and worker's metrics too: one scrape target.
SCHEDULER_HTTP_PORT = 8080
PS_PORT = 7071
TOKEN_DIR = "/etc/seraphim/token"
TOKEN_FILE = f"{TOKEN_DIR}/token"
TLS_DIR = "/etc/seraphim/tls"
SCHEDULER_DATA = "/var/lib/seraphim"
PS_DATA = "/data"
# The image's user (deploy/Dockerfile); fsGroup makes the volumes and the secret files readable by it.
RUN_AS = 10001
# Until JobSpec carries resources: a PS needs its page cache plus Python, gRPC and LMDB's own buffers; a worker
# runs torch on one core. Memory requests equal limits so a node is never overcommitted on memory.
PS_OVERHEAD_MB = 512
PS_CPU = "1"
WORKER_CPU = "1"
WORKER_MEMORY = "4Gi"
WORKER_SHM = "1Gi"
SCHEDULER_STORAGE = "1Gi"
# A StatefulSet's pods carry a controller-revision-hash label "<name>-<10 chars>", which must stay within 63.
MAX_WORKLOAD_NAME = 52
ROLE_SUFFIXES = {"ps": "-ps", "worker": "-worker"}
MAX_JOB_LABEL = MAX_WORKLOAD_NAME - max(len(s) for s in ROLE_SUFFIXES.values())
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def job_label(job_id: str) -> str:
    """The job id as a DNS-1035 label short enough to name every object of the job.

    An id that is already such a label is kept as is; any other one (upper case, '_', too long, leading digit) is
    lower-cased, cleaned and suffixed with a hash of the original id, so distinct ids keep distinct labels.
    """
    if not job_id:
        raise ValueError("job id is empty; pass the id returned by `seraphim submit`")
    if len(job_id) <= MAX_JOB_LABEL and DNS_LABEL.match(job_id):
        return job_id
    cleaned = re.sub(r"[^a-z0-9]+", "-", job_id.lower()).strip("-")
    if not cleaned[:1].isalpha():
        cleaned = ("j-" + cleaned).rstrip("-")
    digest = hashlib.sha256(job_id.encode()).hexdigest()[:8]
    return f"{cleaned[:MAX_JOB_LABEL - len(digest) - 1].rstrip('-')}-{digest}"


def workload_name(job_id: str, role: str) -> str:
    """The name of a job's PS StatefulSet (and its headless Service) or of its worker Job."""
    if role not in ROLE_SUFFIXES:
        raise ValueError(f"role {role!r} is not one of {sorted(ROLE_SUFFIXES)}")
    return job_label(job_id) + ROLE_SUFFIXES[role]


def in_cluster_scheduler_address(namespace: str = "seraphim") -> str:
    """The address at which pods reach the scheduler that ``render_scheduler`` creates in ``namespace``."""
    return f"{SCHEDULER_NAME}.{namespace}.svc:{SCHEDULER_PORT}"


def _check_address(address: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"scheduler address {address!r} is not HOST:PORT with a port in 1..65535, "
                         f"e.g. {in_cluster_scheduler_address()!r}")


def _check_name(what: str, value: str) -> None:
    if len(value) > 63 or not DNS_LABEL.match(value):
        raise ValueError(f"{what} {value!r} is not a DNS-1035 label (lower-case letters, digits and '-', "
                         "starting with a letter, at most 63 characters)")


def _meta(name: str, namespace: str, labels: dict[str, str], annotations: dict[str, str] | None = None) -> dict:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels)}
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def _secret_volumes(token_secret: str, tls_secret: str | None) -> tuple[list[dict], list[dict]]:
    """Volumes and mounts for the cluster token and, when given, the TLS certificates."""
    volumes = [{"name": "token", "secret": {"secretName": token_secret, "defaultMode": 0o440,
                                            "items": [{"key": "token", "path": "token"}]}}]
    mounts = [{"name": "token", "mountPath": TOKEN_DIR, "readOnly": True}]
    if tls_secret:
        # The layout of a kubernetes.io/tls secret with the CA added (what cert-manager writes).
        volumes.append({"name": "tls", "secret": {"secretName": tls_secret, "defaultMode": 0o440}})
        mounts.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
    return volumes, mounts


def _secret_flags(tls_secret: str | None, serves: bool) -> list[str]:
    """The token flag, and the TLS flags: a server (scheduler, PS) presents a certificate, a worker only checks."""
    flags = ["--token-file", TOKEN_FILE]
    if tls_secret:
        if serves:
            flags += ["--tls-cert", f"{TLS_DIR}/tls.crt", "--tls-key", f"{TLS_DIR}/tls.key"]
        flags += ["--tls-ca", f"{TLS_DIR}/ca.crt"]
    return flags


def _container(name: str, image: str, args: list[str], mounts: list[dict], resources: dict,
               port: int | None = None, env: list[dict] | None = None) -> dict:
    container: dict[str, Any] = {
        "name": name, "image": image, "imagePullPolicy": "IfNotPresent",
        "command": ["seraphim"], "args": args, "volumeMounts": mounts, "resources": resources,
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    if env:
        container["env"] = env
    if port is not None:
        container["ports"] = [{"name": "grpc", "containerPort": port, "protocol": "TCP"}]
        container["readinessProbe"] = {"tcpSocket": {"port": port}, "initialDelaySeconds": 2, "periodSeconds": 5,
                                       "failureThreshold": 3}
    return container


def _pod_spec(containers: list[dict], volumes: list[dict], restart_policy: str, grace_s: int) -> dict:
    return {
        "containers": containers, "volumes": volumes, "restartPolicy": restart_policy,
        "terminationGracePeriodSeconds": grace_s, "enableServiceLinks": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS, "fsGroup": RUN_AS,
                            "seccompProfile": {"type": "RuntimeDefault"}},
    }


def _claim_spec(size: str, storage_class: str | None) -> dict:
    spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}
    if storage_class:
        spec["storageClassName"] = storage_class
    return spec


def render_job(spec: JobSpec, job_id: str, image: str, scheduler_address: str, namespace: str = "seraphim",
               token_secret: str = "seraphim-token", storage_class: str | None = None, ps_storage_gi: int = 10,
               tls_secret: str | None = None) -> list[dict]:
    """The PS headless Service and StatefulSet and the workers' Indexed Job of one submitted job, in apply order."""
    _check_address(scheduler_address)
    _check_name("namespace", namespace)
    if not image:
        raise ValueError("image is empty; pass a pullable image reference such as 'registry/seraphim:0.1.0'")
    if ps_storage_gi < 1:
        raise ValueError(f"ps_storage_gi {ps_storage_gi} is below 1; the PS volume holds the SSD tier, "
                         "size it above the tables' total size")
    label = job_label(job_id)
    ps_name, worker_name = workload_name(job_id, "ps"), workload_name(job_id, "worker")
    annotations = {"seraphim/job-id": job_id, "seraphim/job-name": spec.name}
    volumes, mounts = _secret_volumes(token_secret, tls_secret)
    common = ["--scheduler", scheduler_address, "--job", job_id]

    ps_labels = {"app.kubernetes.io/name": APP, "seraphim/job": label, "seraphim/role": "ps"}
    ps_memory = f"{math.ceil(spec.storage.ram_mb) + PS_OVERHEAD_MB}Mi"
    ps_args = ["ps", "start", *common, "--shard-from-hostname", "--host", "0.0.0.0",
               "--advertise", f"$(POD_NAME).{ps_name}.{namespace}.svc", "--port", str(PS_PORT),
               "--data-dir", PS_DATA, *_secret_flags(tls_secret, serves=True)]
    ps_env = [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    ps_container = _container("ps", image, ps_args, [*mounts, {"name": "data", "mountPath": PS_DATA}],
                              {"requests": {"cpu": PS_CPU, "memory": ps_memory}, "limits": {"memory": ps_memory}},
                              port=PS_PORT, env=ps_env)
    ps_service = {
        "apiVersion": "v1", "kind": "Service", "metadata": _meta(ps_name, namespace, ps_labels, annotations),
        # Headless, and publishing not-ready pods: a shard must be resolvable while it registers and recovers.
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": dict(ps_labels),
                 "ports": [{"name": "grpc", "port": PS_PORT, "targetPort": PS_PORT, "protocol": "TCP"}]},
    }
    ps_set = {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": _meta(ps_name, namespace, ps_labels, annotations),
        "spec": {
            "replicas": spec.cluster.total_ps, "serviceName": ps_name, "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": dict(ps_labels)},
            "template": {"metadata": {"labels": dict(ps_labels), "annotations": dict(annotations)},
                         "spec": _pod_spec([ps_container], volumes, "Always", grace_s=60)},
            "volumeClaimTemplates": [{"metadata": {"name": "data", "labels": dict(ps_labels)},
                                      "spec": _claim_spec(f"{ps_storage_gi}Gi", storage_class)}],
        },
    }

    worker_labels = {"app.kubernetes.io/name": APP, "seraphim/job": label, "seraphim/role": "worker"}
    worker_args = ["worker", "start", *common, "--rank", "$(JOB_COMPLETION_INDEX)",
                   *_secret_flags(tls_secret, serves=False)]
    # The Job controller injects this variable too, but only one declared in the spec is expanded in args.
    worker_env = [{"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {
        "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}}]
    worker_mounts = [*mounts, {"name": "shm", "mountPath": "/dev/shm"}]
    worker_volumes = [*volumes, {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": WORKER_SHM}}]
    worker_container = _container("worker", image, worker_args, worker_mounts,
                                  {"requests": {"cpu": WORKER_CPU, "memory": WORKER_MEMORY},
                                   "limits": {"memory": WORKER_MEMORY}}, env=worker_env)
    worker_job = {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": _meta(worker_name, namespace, worker_labels, annotations),
        "spec": {
            "completions": spec.cluster.workers, "parallelism": spec.cluster.workers,
            "completionMode": "Indexed", "backoffLimit": spec.cluster.max_restarts * spec.cluster.workers,
            "template": {"metadata": {"labels": dict(worker_labels), "annotations": dict(annotations)},
                         "spec": _pod_spec([worker_container], worker_volumes, "OnFailure", grace_s=30)},
        },
    }
    return [ps_service, ps_set, worker_job]


def render_scheduler(image: str, namespace: str = "seraphim", token_secret: str = "seraphim-token",
                     storage_class: str | None = None, tls_secret: str | None = None) -> list[dict]:
    """The scheduler's job-store volume, Deployment (one replica, replaced not rolled) and Service, in apply order."""
    _check_name("namespace", namespace)
    if not image:
        raise ValueError("image is empty; pass a pullable image reference such as 'registry/seraphim:0.1.0'")
    labels = {"app.kubernetes.io/name": APP, "seraphim/role": "scheduler"}
    volumes, mounts = _secret_volumes(token_secret, tls_secret)
    claim = f"{SCHEDULER_NAME}-data"
    args = ["scheduler", "start", "--host", "0.0.0.0", "--port", str(SCHEDULER_PORT),
            "--http-port", str(SCHEDULER_HTTP_PORT), "--data-dir", SCHEDULER_DATA,
            *_secret_flags(tls_secret, serves=True)]
    container = _container("scheduler", image, args, [*mounts, {"name": "data", "mountPath": SCHEDULER_DATA}],
                           {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
                           port=SCHEDULER_PORT)
    container["ports"].append({"name": "http", "containerPort": SCHEDULER_HTTP_PORT, "protocol": "TCP"})
    # what deploy/prometheus/prometheus.yaml's pod discovery keeps (it sends the cluster token as a bearer token)
    scrape = {"prometheus.io/scrape": "true", "prometheus.io/port": str(SCHEDULER_HTTP_PORT),
              "prometheus.io/path": "/metrics", "prometheus.io/scheme": "https" if tls_secret else "http"}
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": _meta(claim, namespace, labels),
           "spec": _claim_spec(SCHEDULER_STORAGE, storage_class)}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(SCHEDULER_NAME, namespace, labels),
        "spec": {
            # One writer of the job store: the old pod must release the volume before the new one starts.
            "replicas": 1, "strategy": {"type": "Recreate"}, "selector": {"matchLabels": dict(labels)},
            "template": {"metadata": {"labels": dict(labels), "annotations": scrape},
                         "spec": _pod_spec([container], [*volumes, {"name": "data", "persistentVolumeClaim":
                                                                    {"claimName": claim}}], "Always", grace_s=30)},
        },
    }
    ports = [{"name": name, "port": port, "targetPort": port, "protocol": "TCP"}
             for name, port in (("grpc", SCHEDULER_PORT), ("http", SCHEDULER_HTTP_PORT))]
    service = {"apiVersion": "v1", "kind": "Service", "metadata": _meta(SCHEDULER_NAME, namespace, labels),
               "spec": {"selector": dict(labels), "ports": ports}}
    return [pvc, deployment, service]


def to_yaml(objects: list[dict]) -> str:
    """Objects as one multi-document YAML stream, keys in the order built, for ``kubectl apply -f -``."""
    return yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False)


def main(argv: list[str] | None = None) -> int:
    """Print the manifests of the scheduler, or of a job when a job spec is given."""
    p = argparse.ArgumentParser(prog="python -m seraphim.scheduler.kubernetes", description=main.__doc__)
    p.add_argument("job", nargs="?", help="job spec YAML; without it, the scheduler's manifests are printed")
    p.add_argument("--job-id", help="the id `seraphim submit` returned (required with a job spec)")
    p.add_argument("--image", required=True)
    p.add_argument("--namespace", default="seraphim")
    p.add_argument("--scheduler", help="scheduler HOST:PORT (default: the in-cluster Service)")
    p.add_argument("--token-secret", default="seraphim-token")
    p.add_argument("--tls-secret")
    p.add_argument("--storage-class")
    p.add_argument("--ps-storage-gi", type=int, default=10)
    args = p.parse_args(argv)
    try:
        if args.job is None:
            objects = render_scheduler(args.image, args.namespace, args.token_secret, args.storage_class,
                                       args.tls_secret)
        else:
            if not args.job_id:
                p.error("--job-id is required with a job spec")
            spec, _ = load_job(args.job)
            address = args.scheduler or in_cluster_scheduler_address(args.namespace)
            objects = render_job(spec, args.job_id, args.image, address, args.namespace, args.token_secret,
                                 args.storage_class, args.ps_storage_gi, args.tls_secret)
    except ValueError as exc:  # JobSpecError included
        print(f"seraphim: error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(to_yaml(objects))
    return 0


if __name__ == "__main__":
    sys.exit(main())
