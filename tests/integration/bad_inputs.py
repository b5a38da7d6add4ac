"""Every bad-input class tried against the REST gateway, with the status it must get. The
integration tests (test_errors.py) assert them; `python -m tests.integration.bad_inputs`
starts a tiny stack, sends each one and prints the table RELIABILITY.md carries."""

from __future__ import annotations

import base64
import sys

from tests.integration.cases import RED, data_url

GOOD = {"model": "internvl", "max_tokens": 4, "temperature": 0,
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(RED)}},
                                                  {"type": "text", "text": "hi"}]}]}


def image_message(url: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "?"}]}]


def _with(**fields) -> dict:
    return {**GOOD, **fields}


# name -> (body, status). Bodies that are not JSON objects are sent as raw bytes.
BAD_BODIES: dict[str, tuple[object, int]] = {
    "undecodable image": (_with(messages=image_message("data:image/png;base64," + base64.b64encode(b"not an image").decode())), 400),
    "bad base64": (_with(messages=image_message("data:image/png;base64,@@@")), 400),
    "data: URL not base64": (_with(messages=image_message("data:image/png,rawbytes")), 400),
    "empty image": (_with(messages=image_message("data:image/png;base64,")), 400),
    "unsupported url scheme (file)": (_with(messages=image_message("file:///etc/passwd")), 400),
    "unsupported url scheme (gopher)": (_with(messages=image_message("gopher://127.0.0.1:6379/_INFO")), 400),
    "malformed url http://[::1": (_with(messages=image_message("http://[::1")), 400),
    "loopback url": (_with(messages=image_message("http://127.0.0.1:1/x.png")), 400),
    "cloud metadata url": (_with(messages=image_message("http://169.254.169.254/latest/meta-data/")), 400),
    "IPv4-mapped loopback url": (_with(messages=image_message("http://[::ffff:127.0.0.1]/x.png")), 400),
    "decimal loopback url": (_with(messages=image_message("http://2130706433/x.png")), 400),
    "url with credentials": (_with(messages=image_message("http://user:pw@example.com/x.png")), 400),
    "unknown model": (_with(model="gpt-17"), 404),
    "no messages": (_with(messages=[]), 400),
    "messages not a list": (_with(messages="hi"), 400),
    "bad role": (_with(messages=[{"role": "robot", "content": "hi"}]), 400),
    "image in an assistant message": (_with(messages=[{"role": "assistant", "content": [
        {"type": "image_url", "image_url": {"url": data_url(RED)}}]}]), 400),
    "unknown content part type": (_with(messages=[{"role": "user", "content": [{"type": "audio", "x": 1}]}]), 400),
    "negative max_tokens": (_with(max_tokens=-3), 400),
    "max_tokens 2**32": (_with(max_tokens=4294967296), 400),
    "max_tokens as a string": (_with(max_tokens="many"), 400),
    "seed -1": (_with(seed=-1), 400),
    "seed 2**64": (_with(seed=2**64), 400),
    "top_k 2**59": (_with(top_k=576460752303423488), 400),
    "temperature 5": (_with(temperature=5), 400),
    "top_p 0": (_with(top_p=0), 400),
    "17 stop strings": (_with(stop=[str(i) for i in range(17)]), 400),
    "empty stop string": (_with(stop=[""]), 400),
    "n > 1": (_with(n=2), 400),
    "tools": (_with(tools=[{"type": "function", "function": {"name": "f"}}]), 400),
    "tool_choice": (_with(tool_choice="auto"), 400),
    "functions": (_with(functions=[{"name": "f"}]), 400),
    "audio": (_with(audio={"voice": "alloy", "format": "wav"}), 400),
    "modalities audio": (_with(modalities=["text", "audio"]), 400),
    "logit_bias": (_with(logit_bias={"42": 5}), 400),
    "presence_penalty": (_with(presence_penalty=1.0), 400),
    "too many tiles": (_with(max_tiles=99), 400),
    "vir threshold 2": (_with(vir="auto", vir_thresholds={"relative": 2}), 400),
    "unknown codec": (_with(codec="fp4"), 400),
    "17 images": (_with(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(RED)}}] * 17}]), 400),
    "video num_frames 10**9": (_with(messages=[{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}, "num_frames": 10**9}]}]), 400),
    "undecodable video": (_with(messages=[{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}}]}]), 400),
    "file:// video without --video-dir": (_with(messages=[{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": "file:///etc/passwd"}}]}]), 400),
    "reserved token in text": (_with(messages=[{"role": "user", "content": "x <IMG_CONTEXT> y"}]), 400),
    "malformed JSON": (b"{not json", 400),
    "JSON array body": (b"[1, 2]", 400),
    "empty body": (b"", 400),
}
# Accepted as OpenAI does: fields it ignores or that change nothing here.
ACCEPTED = {
    "unknown field": _with(some_future_field={"x": 1}),
    "tools: []": _with(tools=[]),
    "presence_penalty 0": _with(presence_penalty=0),
}


def post(client, url: str, body: object, stream: bool = False):
    if isinstance(body, bytes):
        return client.post(url, content=body, headers={"content-type": "application/json"})
    return client.post(url, json={**body, "stream": stream})  # type: ignore[dict-item]


def main() -> None:
    """Start a tiny stack, send every case, print the markdown table."""
    from pathlib import Path

    import httpx

    from stack.launcher import LocalStack, StackOptions
    from tools.checkpoint.make import make_checkpoint

    checkpoint = Path(sys.argv[1] if len(sys.argv) > 1 else "checkpoints/tiny")
    if not (checkpoint / "config.json").exists():
        make_checkpoint("tiny", checkpoint)
    with LocalStack(StackOptions(checkpoint=checkpoint, device="cpu", dtype="float32")) as stack, \
            httpx.Client(timeout=120) as client:
        print("| input | status | message |\n|---|---|---|")
        for name, (body, _) in {**BAD_BODIES, **{k: (v, 200) for k, v in ACCEPTED.items()}}.items():
            reply = post(client, f"{stack.base_url}/chat/completions", body)
            message = reply.json()["error"]["message"] if reply.status_code >= 400 else "(served)"
            print(f"| {name} | {reply.status_code} | {message.replace('|', '/')[:150]} |")


if __name__ == "__main__":
    main()
