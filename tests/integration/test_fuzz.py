"""Schemathesis against a live gateway's own OpenAPI schema: >= 1,000 generated requests
(valid and invalid by the schema) and not one 5xx; every error is the documented OpenAI error
JSON. The stack is the tiny preset; the schema served is narrowed only in `max_tokens` /
`max_completion_tokens` (at most 4, and the language default is 4) so accepted cases stay cheap."""

from __future__ import annotations

from collections import Counter

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable

from stack.launcher import LocalStack, StackOptions

# Cases per operation and generation mode: chat 2 modes x 520 + the three GETs up to 40 each (they
# take no input, so only the positive mode applies; Hypothesis stops early once it has tried them all).
CHAT_EXAMPLES = 520
OTHER_EXAMPLES = 40
SETTINGS = dict(deadline=None, database=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck),
                derandomize=True)


def _narrowed(raw: dict) -> dict:
    request = raw["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    for name in ("max_tokens", "max_completion_tokens"):
        for option in request[name].get("anyOf", [request[name]]):
            if option.get("type") == "integer":
                option["maximum"] = 4
    return raw


def test_no_input_gets_a_server_error(tiny_ckpt, tmp_path):
    opts = StackOptions(checkpoint=tiny_ckpt, device="cpu", dtype="float32", log_dir=tmp_path / "logs",
                        ready_timeout_s=300, language_args=["--default-max-tokens", "4"])
    with LocalStack(opts) as stack, requests.Session() as session:
        root = stack.base_url.removesuffix("/v1")
        raw = session.get(f"{root}/openapi.json", timeout=30).json()
        chat = raw["paths"]["/v1/chat/completions"]["post"]["responses"]
        assert {"400", "401", "413", "429"} <= chat.keys()
        assert "ErrorResponse" in raw["components"]["schemas"]
        schema = schemathesis.openapi.from_dict(_narrowed(raw))
        seen: list[tuple[str, int]] = []
        for result in schema.get_all_operations():
            operation = result.ok()
            examples = CHAT_EXAMPLES if operation.path.endswith("/completions") else OTHER_EXAMPLES
            for mode in schemathesis.GenerationMode:
                _fuzz(operation, mode, examples, root, session, seen)
        server_errors = [(label, status) for label, status in seen if status >= 500]
        print("fuzz statuses:", sorted(Counter(seen).items()))
        assert len(seen) >= 1000 and not server_errors, (len(seen), server_errors[:10])


def _fuzz(operation, mode, examples: int, root: str, session: requests.Session, seen: list) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=examples, **SETTINGS)
    def run(case) -> None:
        response = case.call(base_url=root, session=session, timeout=60)
        seen.append((operation.label, response.status_code))
        assert response.status_code < 500, (case.body, response.text[:300])
        if response.status_code >= 400:
            error = response.json()["error"]
            assert isinstance(error["message"], str) and error["type"], response.text

    try:
        run()
    except Unsatisfiable:  # an operation without inputs has no invalid (negative) cases
        assert mode is schemathesis.GenerationMode.NEGATIVE and not operation.body and examples < CHAT_EXAMPLES
