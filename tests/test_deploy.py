"""The launch recipes under deploy/ are real files: each is checked by the tool that
would read it where one works offline (bash, a YAML parser, systemd-analyze; kubectl
needs a cluster even for a client dry run), and each starts the same `gloss run` the
README documents."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def test_the_slurm_array_is_valid_bash_and_starts_one_worker_per_task():
    script = DEPLOY / "slurm" / "gloss-workers.sbatch"
    check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    text = script.read_text()
    directives = [
        line.split(None, 1)[1] for line in text.splitlines() if line.startswith("#SBATCH")
    ]
    assert any(d.startswith("--array=") for d in directives)
    assert any(d.startswith("--gres=gpu:") for d in directives)
    assert "gloss run --config" in text and "--device" in text


def test_the_slurm_array_treats_a_partial_run_as_success(tmp_path):
    """Run the script itself with a stand-in `gloss` that exits 10, then 3."""
    fake = tmp_path / "gloss"
    for code, expected in ((10, 0), (3, 3), (0, 0)):
        fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/args\nexit {code}\n')
        fake.chmod(0o755)
        env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "GLOSS_DATABASE_URL": "postgresql://x/y",
               "CUDA_VISIBLE_DEVICES": "0", "SLURM_ARRAY_TASK_ID": "3"}  # fmt: skip
        result = subprocess.run(
            ["bash", str(DEPLOY / "slurm" / "gloss-workers.sbatch")], cwd=tmp_path, env=env,
            capture_output=True, text=True,
        )  # fmt: skip
        assert result.returncode == expected, (code, result.stderr)
        assert (tmp_path / "args").read_text().split()[:4] == [
            "run",
            "--config",
            "gloss.toml",
            "--device",
        ]
    assert "cuda:0" in (tmp_path / "args").read_text()
    assert "gloss-worker-3.log" in (tmp_path / "args").read_text()


def test_the_kubernetes_job_runs_parallel_workers_on_one_database():
    (job,) = list(yaml.safe_load_all((DEPLOY / "k8s" / "gloss-workers.yaml").read_text()))
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    spec = job["spec"]
    assert spec["parallelism"] > 1 and "completions" not in spec  # the work-queue pattern
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] in ("OnFailure", "Never")
    (container,) = pod["containers"]
    assert container["command"][:2] == ["gloss", "run"]
    env = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in env["GLOSS_DATABASE_URL"]["valueFrom"]
    mounts = {m["name"] for m in container["volumeMounts"]}
    assert mounts <= {v["name"] for v in pod["volumes"]}


@pytest.mark.parametrize("unit", ["gloss-worker@.service", "gloss-worker@.timer"])
def test_the_systemd_template_units_verify(tmp_path, unit):
    text = (DEPLOY / "systemd" / unit).read_text()
    if unit.endswith(".service"):
        assert "ExecStart=/usr/bin/env gloss run" in text and "%i" in text
        assert "SuccessExitStatus=10" in text
    else:
        assert "OnCalendar=" in text
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here")
    # A template is verified as one of its instances, beside its partner unit.
    for name in ("gloss-worker@.service", "gloss-worker@.timer"):
        instance = name.replace("@.", "@0.")
        shutil.copy(DEPLOY / "systemd" / name, tmp_path / instance)
    check = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / unit.replace("@.", "@0."))],
        capture_output=True, text=True,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
