"""Chat messages + per-image token counts -> prompt token ids, InternVL style.

The checkpoint's template (`prompt_template`: an original-layout checkpoint's `conversation.py`
template, an HF-native one's jinja chat template) renders each image as one `<IMG_CONTEXT>`; we
expand image i into `<img>` + `<IMG_CONTEXT>` x n_i + `</img>`, where n_i comes from the image's
EmbeddingRef (sum of its tiles' tokens: 256 each, 64 for a router-compressed tile).

A video is its sampled frames, each an image of one tile, rendered as the InternVL model cards
and transformers' InternVLProcessor render them: "Frame1: <image>\nFrame2: <image>\n..." (the
template puts the newline after each image)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dvd.errors import InvalidRequest
from dvd.types import ImagePart, Message, TextPart, VideoPart
from language_service.prompt_template import CHECKPOINT, resolve_template

ROLES = ("system", "user", "assistant")
IMAGE_TOKENS = {"start": "<img>", "end": "</img>", "context": "<IMG_CONTEXT>"}
_RESERVED = ("<img>", "</img>", "<IMG_CONTEXT>", "<video>")


@dataclass(frozen=True)
class Prompt:
    token_ids: list[int]
    num_image_tokens: int
    image_order: list[int]  # image indices in the order their placeholders appear


class PromptBuilder:
    """Owns the prompt template (`chat_template`: see `prompt_template.resolve_template`) and the
    image special tokens."""

    def __init__(self, tokenizer, checkpoint_dir: Path, chat_template: str = CHECKPOINT) -> None:
        self.tokenizer = tokenizer
        self.template = resolve_template(chat_template, checkpoint_dir, tokenizer)
        probe = self.template.render([{"role": "user", "content": [{"type": "image"}]}])
        if probe.count(IMAGE_TOKENS["context"]) != 1:
            raise ValueError(f"chat template {self.template.name!r} does not write an image part as one "
                             f"{IMAGE_TOKENS['context']}")
        ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in IMAGE_TOKENS.items()}
        if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids.values():
            raise ValueError(f"tokenizer lacks the InternVL image tokens {list(IMAGE_TOKENS.values())}")
        self.start_id, self.end_id, self.context_id = ids["start"], ids["end"], ids["context"]

    def build(self, messages: list[Message], image_tokens: list[int]) -> Prompt:
        """image_tokens[i]: LLM tokens of image i. Images appear in the order of ImagePart indices."""
        rendered = self.template.render([self._to_template(m, len(image_tokens)) for m in messages])
        order = [i for m in messages for p in m.parts for i in _image_indices(p)]
        pieces = rendered.split(IMAGE_TOKENS["context"])
        if len(pieces) - 1 != len(order):
            raise InvalidRequest("the chat template did not place every image; check the messages' roles")
        ids: list[int] = self._encode(pieces[0])
        for index, piece in zip(order, pieces[1:]):
            ids += [self.start_id] + [self.context_id] * image_tokens[index] + [self.end_id]
            ids += self._encode(piece)
        return Prompt(ids, sum(image_tokens[i] for i in order), order)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False) if text else []

    def _to_template(self, message: Message, num_images: int) -> dict:
        if message.role not in ROLES:
            raise InvalidRequest(f"unknown role {message.role!r}; use one of {', '.join(ROLES)}")
        content = []
        for part in message.parts:
            if isinstance(part, TextPart):
                if any(tok in part.text for tok in _RESERVED):
                    raise InvalidRequest("message text must not contain image special tokens like <IMG_CONTEXT>")
                content.append({"type": "text", "text": part.text})
                continue
            for number, index in enumerate(_image_indices(part), start=1):
                if not 0 <= index < num_images:
                    raise InvalidRequest(f"image index {index} out of range ({num_images} images)")
                if isinstance(part, VideoPart):
                    content.append({"type": "text", "text": f"Frame{number}: "})
                content.append({"type": "image"})
        return {"role": message.role, "content": content}


def _image_indices(part: TextPart | ImagePart | VideoPart) -> tuple[int, ...]:
    if isinstance(part, VideoPart):
        return part.indices
    return (part.index,) if isinstance(part, ImagePart) else ()
