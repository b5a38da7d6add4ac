"""`dvd serve --ray` as a user runs it: a local Ray with the Serve app, an answer on the printed
REST endpoint, the pools' replica counts printed, and everything gone after Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx
import pytest

from stack.launcher import free_port
from tests.integration.test_cli import _alive


@pytest.mark.slow  # ~60 s on 2 cores; tests/stack/ray/test_ray_serve.py covers the same app in the default suite
def test_dvd_serve_ray_answers_and_shuts_down(tiny_ckpt):
    port, grpc_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.cli", "serve", "--ray", "--num-cpus", "2", "--model", str(tiny_ckpt),
         "--port", str(port), "--grpc-port", str(grpc_port), "--device", "cpu", "--max-vision-replicas", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        lines = _read_until(proc, lambda line: line.startswith("ready."))
        lines += _read_until(proc, lambda line: "vision {" in line)  # the first replica counts
        output = "".join(lines)
        assert f"REST (OpenAI): http://127.0.0.1:{port}/v1" in output
        assert f"gRPC gateway:  127.0.0.1:{grpc_port}" in output
        assert "vision pool:   1..2 replicas, 0.667 CPU each" in output  # 2 CPUs over 2 + 1 replicas at max
        assert "vision {'RUNNING': 1}" in lines[-1] and "language {'RUNNING': 1}" in lines[-1]
        body = {"model": "internvl", "max_tokens": 5, "messages": [{"role": "user", "content": "Hello!"}]}
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=60)
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] >= 1
        ray_procs = _session_processes(proc.pid)
        assert len(ray_procs) > 3, ray_procs  # raylet, GCS, Serve controller, proxy, replicas...
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0
        deadline = time.monotonic() + 30
        while [p for p in ray_procs if _alive(p)] and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not [p for p in ray_procs if _alive(p)], "Ray processes survived Ctrl-C"
    finally:
        if proc.poll() is None:
            proc.kill()


def _read_until(proc: subprocess.Popen, done, timeout_s: float = 300) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        assert line, f"dvd serve --ray exited early: {''.join(lines)}"
        lines.append(line)
        if done(line):
            return lines
    raise AssertionError(f"timed out: {''.join(lines)}")


def _session_processes(pid: int) -> list[int]:
    """Every process of `pid`'s session (Ray's daemons and workers stay in it), but `pid` itself."""
    out = subprocess.run(["ps", "-o", "pid=", "-s", str(pid)], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split() if int(p) != pid]
