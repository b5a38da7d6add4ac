"""`dvd serve` as a user runs it: starts three processes, answers a request, and stops them
all on SIGINT (Ctrl-C)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx

from stack.launcher import free_port


def test_dvd_serve_answers_and_shuts_down(tiny_ckpt, tmp_path):
    port, grpc_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.cli", "serve", "--model", str(tiny_ckpt), "--port", str(port),
         "--grpc-port", str(grpc_port), "--device", "cpu", "--log-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, f"dvd serve exited early: {''.join(lines)}"
            lines.append(line)
            if line.startswith("ready."):
                break
        body = {"model": "internvl", "max_tokens": 5, "messages": [{"role": "user", "content": "Hello!"}]}
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=60)
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] >= 1
        children = _children(proc.pid)
        assert len(children) == 3, children  # gateway, vision, language
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        time.sleep(0.5)
        assert not [pid for pid in children if _alive(pid)], "child processes survived Ctrl-C"
    finally:
        if proc.poll() is None:
            proc.kill()


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
