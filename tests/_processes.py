"""Running the package in subprocesses: one process, or two joined as one multi-host run (two
fake CPU devices each, the shape of a two-host pod slice) the way a pod runs them: the same
command with JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID set, so that
`distributed.initialize("auto")` joins them."""

import json
import os
import re
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def env(devices: int, **extra) -> dict[str, str]:
    """This session's environment (its compilation cache included) with `devices` CPU devices
    and no leftover JAX_* variables of a multi-process run."""
    out = {k: v for k, v in os.environ.items() if k not in (
        "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")}
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", out.get("XLA_FLAGS", ""))
    out["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    out["PYTHONPATH"] = ROOT
    out["JAX_PLATFORMS"] = "cpu"
    return {**out, **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def two_processes(args: list[str]) -> list[subprocess.CompletedProcess]:
    """Runs `python ARGS` as processes 0 and 1 of one run (2 fake CPU devices each)."""
    port = free_port()
    procs = [subprocess.Popen([sys.executable, *args], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=env(2, JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                                      JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)))
             for i in range(2)]
    out = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def one_process(args: list[str], devices: int = 4) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=env(devices))


def read_log(workdir) -> list[dict]:
    """The trial log without wall times (which differ between runs)."""
    with open(os.path.join(workdir, "trials.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k != "wall_time"} for line in f]
