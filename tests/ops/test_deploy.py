"""Issue 24 point 6: the deployment files are valid and agree with each other and with the
code: Kubernetes manifests against a pinned Kubernetes version, the systemd unit by
systemd's own verifier, the example config by the service's config loader, the image by
docker (where a daemon runs)."""

from __future__ import annotations

import configparser
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib

import pytest
import yaml
from kubernetes_validate import validate

from wholecall.controller.config import Config
from wholecall.service.config import DEFAULTS, load
from wholecall.shm import layout as L

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "deploy")
K8S_VERSION = "1.31.0"
"""The Kubernetes version the manifests are validated against (a supported release)."""
HUGE_PAGE = 2 << 20


def manifests() -> list[dict]:
    docs = []
    for path in sorted(glob.glob(os.path.join(DEPLOY, "kubernetes", "*.yaml"))):
        with open(path) as f:
            docs += [d for d in yaml.safe_load_all(f) if d]
    return docs


def by_kind(kind: str) -> dict:
    [doc] = [d for d in manifests() if d["kind"] == kind]
    return doc


def unit(name: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # keys are case-sensitive
    cp.read(os.path.join(DEPLOY, name))
    return cp


def test_manifests_validate_against_the_pinned_kubernetes() -> None:
    docs = manifests()
    assert {d["kind"] for d in docs} >= {"Deployment", "ConfigMap", "PersistentVolumeClaim"}
    for doc in docs:
        validate(doc, K8S_VERSION, strict=True)  # raises ValidationError naming the field


def test_the_pod_agrees_with_its_config_and_the_code() -> None:
    cfg = tomllib.loads(by_kind("ConfigMap")["data"]["serve.toml"])
    assert set(cfg) <= set(DEFAULTS), set(cfg) - set(DEFAULTS)  # every key is one `serve` knows
    pod = by_kind("Deployment")["spec"]["template"]
    spec, [c] = pod["spec"], pod["spec"]["containers"]
    ops_port = int(cfg["ops_listen"].rsplit(":", 1)[1])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": ops_port}, probe
    notes = pod["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true" and int(notes["prometheus.io/port"]) == ops_port
    assert notes["prometheus.io/path"] == "/metrics"
    # Huge pages: requested = limited (Kubernetes insists), whole pages, room for the arena
    # that max_calls makes, mounted where arena_dir points, as a hugetlbfs emptyDir.
    res = c["resources"]
    assert res["requests"]["hugepages-2Mi"] == res["limits"]["hugepages-2Mi"]
    mib = int(re.fullmatch(r"(\d+)Mi", res["limits"]["hugepages-2Mi"]).group(1))
    assert (mib << 20) % HUGE_PAGE == 0
    arena = L.Layout(2 * cfg["max_calls"], Config().ring_samples).total
    assert mib << 20 >= -(-arena // HUGE_PAGE) * HUGE_PAGE, (mib, arena)
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert mounts["arena"] == cfg["arena_dir"] and volumes["arena"]["emptyDir"] == {"medium": "HugePages"}
    assert mounts["recordings"] == cfg["recordings_dir"]
    assert volumes["recordings"]["persistentVolumeClaim"]["claimName"] == by_kind("PersistentVolumeClaim")["metadata"]["name"]
    assert "ReadWriteMany" in by_kind("PersistentVolumeClaim")["spec"]["accessModes"]
    # RTP on the node's own addresses; the drain fits in the grace period as in the unit.
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert "$(NODE_IP)" in c["args"]
    grace = spec["terminationGracePeriodSeconds"]
    assert grace >= Config().stop_timeout_s + 10
    assert grace == int(unit("wholecall.service")["Service"]["TimeoutStopSec"])
    assert c["securityContext"]["readOnlyRootFilesystem"] and spec["securityContext"]["runAsNonRoot"]


def test_systemd_unit_is_hardened_and_needs_the_arena_mount() -> None:
    s = unit("wholecall.service")
    svc = s["Service"]
    assert "run-wholecall-arena.mount" in s["Unit"]["Requires"] and "run-wholecall-arena.mount" in s["Unit"]["After"]
    assert svc["User"] == "wholecall" and svc["NoNewPrivileges"] == "yes" and svc["PrivateTmp"] == "yes"
    assert svc["ProtectSystem"] == "strict"
    assert svc["CapabilityBoundingSet"] == "CAP_SYS_NICE" == svc["AmbientCapabilities"]
    writable = svc["ReadWritePaths"].split()
    cfg = tomllib.load(open(os.path.join(DEPLOY, "serve.toml"), "rb"))
    for path in (cfg["recordings_dir"], cfg["arena_dir"]):
        assert any(path == w or path.startswith(w.rstrip("/") + "/") for w in writable), path
    mount = unit("run-wholecall-arena.mount")["Mount"]
    assert mount["Where"] == cfg["arena_dir"] and "huge=within_size" in mount["Options"]
    assert int(svc["LimitNOFILE"]) >= 2 * cfg["max_calls"] + 1024
    assert svc["KillMode"] == "mixed" and int(svc["TimeoutStopSec"]) >= Config().stop_timeout_s + 10


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_verifies_the_units(tmp_path) -> None:
    with open(os.path.join(DEPLOY, "wholecall.service")) as f:
        text = f.read().replace("/opt/wholecall/bin/wholecall", os.path.join(os.path.dirname(sys.executable), "wholecall"))
    (tmp_path / "wholecall.service").write_text(text)
    shutil.copy(os.path.join(DEPLOY, "run-wholecall-arena.mount"), tmp_path)
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", "run-wholecall-arena.mount", "wholecall.service"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if "wholecall" in ln or "Unknown" in ln]
    assert r.returncode == 0 and lines == [], r.stdout + r.stderr


def test_example_config_loads(tmp_path) -> None:
    token = tmp_path / "token"
    token.write_text("x" * 32)
    cfg = load(["--config", os.path.join(DEPLOY, "serve.toml"), "--token-file", str(token), "--arena-dir", "/dev/shm"])
    assert cfg.log_format == "json" and cfg.ops_port == 9090 and cfg.port == 8080


def test_dockerfile_ships_every_package_and_runs_as_a_user() -> None:
    text = open(os.path.join(DEPLOY, "Dockerfile")).read()
    assert re.search(r"^FROM python:3\.\d+-slim$", text, re.M)
    assert "libsndfile1" in text
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and not user[-1].startswith(("root", "0"))
    assert re.search(r"^HEALTHCHECK .*\n.*/healthz", text, re.M)
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        folders = set(tomllib.load(f)["tool"]["setuptools"]["package-dir"].values())
    copied = set(re.findall(r"^COPY (\S+)/ ", text, re.M))
    assert {f.split("/")[0] for f in folders} <= copied, {f.split("/")[0] for f in folders} - copied


def _docker_reason() -> str:
    if shutil.which("docker") is None:
        return "docker is not installed"
    r = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    return "" if r.returncode == 0 else "no docker daemon reachable (docker info failed)"


def test_grafana_dashboard_is_grafana_json() -> None:
    with open(os.path.join(DEPLOY, "grafana-dashboard.json")) as f:
        dash = json.load(f)
    assert dash["uid"] and dash["panels"]
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert all("wholecall_" in e for e in exprs)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


@pytest.mark.skipif(bool(_docker_reason()), reason=_docker_reason() or "n/a")
def test_the_image_builds() -> None:
    tag = f"wholecall-test:{os.getpid()}"
    r = subprocess.run(["docker", "build", "-f", "deploy/Dockerfile", "-t", tag, "."], cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    try:
        info = json.loads(subprocess.run(["docker", "image", "inspect", tag], capture_output=True, text=True,
                                         check=True).stdout)[0]["Config"]
        assert info["User"] == "10001:10001" and "/healthz" in " ".join(info["Healthcheck"]["Test"])
        r = subprocess.run(["docker", "run", "--rm", "--entrypoint", "wholecall", tag, "serve", "--help"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "--log-format" in r.stdout
    finally:
        subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True)


def test_the_image_entrypoint_needs_and_passes_the_rtp_address(tmp_path) -> None:
    """The image listened on 0.0.0.0 without --rtp-address, so the API told callers to send
    RTP to 0.0.0.0 (a reviewer's find). Its entrypoint, run here with a stand-in `wholecall`
    that prints its arguments: refused without WHOLECALL_RTP_ADDRESS, passed through with it."""
    text = open(os.path.join(DEPLOY, "Dockerfile")).read()
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))
    cmd = json.loads(re.search(r"^CMD (\[.*?\])$", text.replace("\\\n", ""), re.M | re.S).group(1))
    stub = tmp_path / "wholecall"
    stub.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    stub.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin"}
    r = subprocess.run(entry + cmd, capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode != 0 and "set WHOLECALL_RTP_ADDRESS" in r.stderr
    r = subprocess.run(entry + cmd, capture_output=True, text=True, env={**env, "WHOLECALL_RTP_ADDRESS": "192.0.2.7"},
                       timeout=30)
    assert r.returncode == 0 and r.stdout.split("\n")[:3] == ["serve", "--rtp-address", "192.0.2.7"], r.stdout
    assert r.stdout.split("\n")[3:-1] == cmd
