"""The launch scripts parse, print their usage without arguments, and run the commands they should.

Nothing real is installed or contacted: python, pip, gcloud (and friends) are fakes on PATH that
record their arguments.
"""

import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch")
SCRIPTS = ("tpu_vm.sh", "tpu_pod.sh", "gpu.sh")
BASH = shutil.which("bash")
# Every program a script could install or launch with.
FAKED = ("python", "python3", "pip", "pip3", "gcloud", "sudo", "apt-get", "curl", "docker")

pytestmark = pytest.mark.skipif(BASH is None, reason="needs bash")


@pytest.fixture
def fakes(tmp_path):
    """A PATH whose FAKED programs append {"argv": [...], "env": {...}} to calls.jsonl."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.jsonl"
    bin_dir.mkdir()
    recorder = (f"#!{sys.executable}\n"
                "import json, os, sys\n"
                f"with open({str(log)!r}, 'a') as f:\n"
                "    env = {k: os.environ.get(k) for k in ('JAX_PLATFORMS', 'PYTHONPATH')}\n"
                "    f.write(json.dumps({'argv': [os.path.basename(sys.argv[0])] + sys.argv[1:],"
                " 'env': env}) + '\\n')\n")
    for name in FAKED:
        path = bin_dir / name
        path.write_text(recorder)
        path.chmod(0o755)

    def calls():
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]

    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHON", "VENV", "SKIP_INSTALL", "SKIP_COPY", "DETACH", "PROJECT",
                        "REMOTE_DIR", "CUDA", "JAX_PLATFORMS", "PYTHONPATH")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env, calls


def _run(script, *args, env, cwd):
    return subprocess.run([BASH, os.path.join(LAUNCH, script), *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_parses(script):
    r = subprocess.run([BASH, "-n", os.path.join(LAUNCH, script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with open(os.path.join(LAUNCH, script)) as f:
        text = f.read()
    assert text.startswith("#!/usr/bin/env bash\n") and "\nset -euo pipefail\n" in text


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("args", [(), ("configs/default.py",), ("", "runs/x"), ("-x", "runs/x")])
def test_usage_without_enough_arguments_installs_nothing(script, args, fakes, tmp_path):
    env, calls = fakes
    r = _run(script, *args, env=env, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.startswith(f"usage: {script} ")
    assert "CONFIG" in r.stderr and "WORKDIR" in r.stderr
    assert calls() == []


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_prints_usage_and_succeeds(script, fakes, tmp_path):
    env, calls = fakes
    r = _run(script, "--help", env=env, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith(f"usage: {script} ") and not r.stderr
    assert calls() == []


@pytest.mark.parametrize("script,extra,platform", [("tpu_vm.sh", "tpu", "tpu"),
                                                   ("gpu.sh", "cuda12", "cuda")])
def test_single_host_installs_the_accelerator_build_then_trains(script, extra, platform, fakes,
                                                                tmp_path):
    env, calls = fakes
    r = _run(script, "configs/default.py:local", "runs/a b", "--config.seed=1", env=env,
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        jax_pin = next(line.strip() for line in f if line.startswith("jax=="))
    argv = [c["argv"] for c in calls()]
    assert argv == [
        ["python3", "-m", "pip", "install", "-q", "-r", os.path.join(ROOT, "requirements.txt")],
        ["python3", "-m", "pip", "install", "-q", jax_pin.replace("jax==", f"jax[{extra}]==")],
        ["python3", "-m", "ma2ml_jax.train", "--config=configs/default.py:local",
         "--workdir=runs/a b", "--config.seed=1"]]
    # A missing accelerator is an error, not a silent CPU run; the checkout is importable.
    assert calls()[-1]["env"] == {"JAX_PLATFORMS": platform, "PYTHONPATH": ROOT}


@pytest.mark.parametrize("script", ["tpu_vm.sh", "gpu.sh"])
def test_single_host_skip_install_and_python(script, fakes, tmp_path):
    env, calls = fakes
    env = dict(env, SKIP_INSTALL="1", PYTHON="python", JAX_PLATFORMS="cpu")
    r = _run(script, "c.py", "w", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert [c["argv"] for c in calls()] == [["python", "-m", "ma2ml_jax.train", "--config=c.py",
                                            "--workdir=w"]]
    assert calls()[0]["env"]["JAX_PLATFORMS"] == "cpu"


def test_gpu_takes_the_cuda_extra_from_the_environment(fakes, tmp_path):
    env, calls = fakes
    r = _run("gpu.sh", "c.py", "w", env=dict(env, CUDA="cuda13"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert calls()[1]["argv"][-1].startswith("jax[cuda13]==")


def _remote_command(call):
    argv = call["argv"]
    return argv[argv.index("--command") + 1]


def test_pod_copies_the_checkout_then_runs_the_same_command_on_every_worker(fakes, tmp_path):
    env, calls = fakes
    override = "--config.data.data_dir=/data/my tfds"
    r = _run("tpu_pod.sh", "my-pod", "us-central2-b", "configs/imagenet200.py", "runs/in 200",
             override, env=dict(env, PROJECT="proj"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    scp, unpack, launch = calls()
    where = ["--zone", "us-central2-b", "--worker=all", "--project", "proj"]
    assert scp["argv"][:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
    assert scp["argv"][6:] == ["my-pod:ma2ml_jax_checkout.tar.gz"] + where
    for call in (unpack, launch):
        assert call["argv"][:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-pod"]
        assert call["argv"][6:11] == where
    assert "tar -xzf ma2ml_jax_checkout.tar.gz -C ma2ml_jax" in _remote_command(unpack)
    # The worker's shell gets every argument back unchanged (spaces included).
    words = shlex.split(_remote_command(launch))
    assert words == ["cd", "ma2ml_jax", "&&", "SKIP_INSTALL=0", "bash", "launch/tpu_vm.sh",
                     "configs/imagenet200.py", "runs/in 200", override, "--distributed=true"]
    # The temporary tarball is gone.
    assert not os.path.exists(scp["argv"][5])


def test_pod_tarball_holds_the_working_tree(fakes, tmp_path):
    env, calls = fakes
    # A gcloud that keeps a copy of what scp would send.
    keep = tmp_path / "sent.tar.gz"
    gcloud = tmp_path / "bin" / "gcloud"
    gcloud.write_text(gcloud.read_text() + (
        "if sys.argv[4] == 'scp':\n"
        f"    import shutil; shutil.copy(sys.argv[5], {str(keep)!r})\n"))
    r = _run("tpu_pod.sh", "pod", "zone", "c.py", "w", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    listing = subprocess.run(["tar", "-tzf", str(keep)], capture_output=True, text=True,
                             check=True).stdout.split()
    names = {n.removeprefix("./") for n in listing}
    assert {"launch/tpu_vm.sh", "requirements.txt", "ma2ml_jax/train.py",
            "configs/default.py"} <= names
    assert not any(n.startswith(("runs/", ".git/")) or "__pycache__" in n for n in names)


def test_pod_detach_skip_copy_and_remote_dir(fakes, tmp_path):
    env, calls = fakes
    env = dict(env, DETACH="1", SKIP_COPY="1", SKIP_INSTALL="1", REMOTE_DIR="src/ma2ml")
    r = _run("tpu_pod.sh", "pod", "zone", "c.py", "w", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (launch,) = calls()  # no copy
    assert launch["argv"][6:9] == ["--zone", "zone", "--worker=all"]
    assert shlex.split(_remote_command(launch)) == [
        "cd", "src/ma2ml", "&&", "SKIP_INSTALL=1", "nohup", "bash", "launch/tpu_vm.sh", "c.py",
        "w", "--distributed=true", ">", "launch.log", "2>&1", "<", "/dev/null", "&"]
