"""Chat cases shared by the end-to-end tests, each in OpenAI form (for the gateway) and HF
form (for the reference), with the same images."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from tests.conftest import png_bytes

RED = png_bytes(448, 448, color=(220, 20, 20))  # 1 tile
NOISE_WIDE = png_bytes(896, 448, seed=1)  # 2x1 grid + thumbnail = 3 tiles
BLUE_TALL = png_bytes(300, 700, color=(20, 40, 220))  # 1x2 grid + thumbnail = 3 tiles
NOISE_SQUARE = png_bytes(448, 448, seed=2)


@dataclass(frozen=True)
class Case:
    name: str
    turns: tuple  # ((role, (part, ...)), ...) where part is str or bytes (an image)

    def openai_messages(self) -> list[dict]:
        out = []
        for role, parts in self.turns:
            content = [{"type": "text", "text": p} if isinstance(p, str) else
                       {"type": "image_url", "image_url": {"url": data_url(p)}} for p in parts]
            out.append({"role": role, "content": content})
        return out

    def hf_conversation(self) -> tuple[list[dict], list[bytes]]:
        conversation, images = [], []
        for role, parts in self.turns:
            content = []
            for p in parts:
                if isinstance(p, str):
                    content.append({"type": "text", "text": p})
                else:
                    content.append({"type": "image"})
                    images.append(p)
            conversation.append({"role": role, "content": content})
        return conversation, images


@dataclass(frozen=True)
class OpenAIAnswer:
    """One image question asked twice through the official client: streamed and not."""

    streamed: str
    finish_reasons: list
    stream_usage: object
    whole: object  # the non-streamed ChatCompletion


def ask_openai_about_an_image(base_url: str, max_tokens: int = 24) -> OpenAIAnswer:
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="unused")
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(RED)}},
                                             {"type": "text", "text": "What colour is this?"}]}]
    stream = client.chat.completions.create(model="internvl", messages=messages, max_tokens=max_tokens,
                                            temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    return OpenAIAnswer(
        streamed="".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
        finish_reasons=[c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason],
        stream_usage=chunks[-1].usage,
        whole=client.chat.completions.create(model="internvl", messages=messages, max_tokens=max_tokens,
                                             temperature=0),
    )


def data_url(image: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(image).decode()


CASES = [
    Case("text_only", (("user", ("Tell me a short story about a lighthouse.",)),)),
    Case("one_tile", (("user", (RED, "What is in this image?")),)),
    Case("multi_tile", (("user", (NOISE_WIDE, "Describe the picture in detail.")),)),
    Case("two_images", (("user", (RED, BLUE_TALL, "How do these two images differ?")),)),
    Case("two_turn", (
        ("user", (NOISE_SQUARE, "What do you see?")),
        ("assistant", ("I see colourful noise.",)),
        ("user", ("Is there any pattern in it?",)),
    )),
]
