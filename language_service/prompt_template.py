"""Which template renders a checkpoint's prompts, and the published InternVL conversation templates.

The template is a property of the checkpoint, as LMDeploy treats it:

* original layout (InternVLChatModel): the `conversation.py` template its config.json names in
  `template` (`internvl2_5` for InternVL2.5 / 3 / 3.5), rendered as the published `model.chat`
  renders it, default system message included;
* HF-native: the tokenizer's own `chat_template` (jinja).

`--chat-template` overrides it: `checkpoint` (the default), a template name (`internvl2_5`), or a
path to a `.jinja` file (rendered like the tokenizer's; it must write an image part as
`<IMG_CONTEXT>`, as the HF InternVL templates do).

Renderers take chat messages in the HF content form ({"role", "content": [{"type": "text" |
"image", ...}]}) and return the prompt text with one `<IMG_CONTEXT>` per image, which
`PromptBuilder` expands into `<img>` + `<IMG_CONTEXT>` x n + `</img>`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from dvd.checkpoint import checkpoint_layout

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint"
IMAGE_PLACEHOLDER = "<IMG_CONTEXT>"


class Renderer(Protocol):
    name: str

    def render(self, messages: list[dict]) -> str:
        """The prompt text up to and including the assistant's generation header."""


@dataclass(frozen=True)
class Conversation:
    """A `conversation.py` template with the MPT separator style (the one InternVL's use).

    get_prompt: system_template(system_message) + sep, then per (role, message) role + message +
    sep (only the role when the message is empty), the last turn being (assistant, None). A
    client's system message replaces the default; with several, each renders in place, as
    LMDeploy renders them."""

    name: str
    system_template: str
    system_message: str
    roles: tuple[str, str]  # the user and assistant prefixes
    sep: str

    def render(self, messages: list[dict]) -> str:
        ret = "" if messages and messages[0]["role"] == "system" else self._system(self.system_message)
        for message in messages:
            text = "".join(_content_text(part) for part in message["content"])
            if message["role"] == "system":
                ret += self._system(text)
                continue
            role = self.roles[0] if message["role"] == "user" else self.roles[1]
            ret += role + text + self.sep if text else role
        return ret + self.roles[1]

    def _system(self, text: str) -> str:
        return self.system_template.format(system_message=text) + self.sep


CONVERSATIONS = {
    "internvl2_5": Conversation(
        name="internvl2_5",
        system_template="<|im_start|>system\n{system_message}",
        system_message="你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。",
        roles=("<|im_start|>user\n", "<|im_start|>assistant\n"),
        sep="<|im_end|>\n",
    ),
}


class JinjaTemplate:
    """A jinja chat template, rendered by the tokenizer as transformers renders it."""

    def __init__(self, name: str, template: str, tokenizer) -> None:
        self.name, self.template, self.tokenizer = name, template, tokenizer

    def render(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, chat_template=self.template, tokenize=False,
                                                  add_generation_prompt=True)


def resolve_template(choice: str, checkpoint_dir: Path, tokenizer) -> Renderer:
    """The renderer `--chat-template choice` selects for this checkpoint (ValueError if none fits)."""
    if choice in CONVERSATIONS:
        return CONVERSATIONS[choice]
    if choice != CHECKPOINT:
        path = Path(choice).expanduser()
        if not path.is_file():
            raise ValueError(f"--chat-template {choice!r} is neither {CHECKPOINT!r}, a template name "
                             f"({', '.join(CONVERSATIONS)}) nor a jinja file")
        return JinjaTemplate(str(path), path.read_text(), tokenizer)
    layout = checkpoint_layout(checkpoint_dir)
    if layout.template is not None:
        if layout.template not in CONVERSATIONS:
            raise ValueError(f"{checkpoint_dir} names conversation template {layout.template!r}, which dvd-serve "
                             f"does not render (known: {', '.join(CONVERSATIONS)}); pass --chat-template PATH.jinja")
        return CONVERSATIONS[layout.template]
    template = tokenizer.chat_template or _template_from_files(checkpoint_dir)
    if not template:
        raise ValueError(f"{checkpoint_dir} has no chat template; pass --chat-template")
    if layout.original:
        log.warning("%s is in the original layout but names no `template`; using its tokenizer's chat template",
                    checkpoint_dir)
    return JinjaTemplate("checkpoint chat_template", template, tokenizer)


def _content_text(part: dict) -> str:
    # model.chat writes each image as "<image>\n" (the cards: "<image>\n" + question, "Frame1:
    # <image>\n..." for a video), as the HF InternVL templates write "<IMG_CONTEXT>\n".
    return part["text"] if part["type"] == "text" else IMAGE_PLACEHOLDER + "\n"


def _template_from_files(checkpoint_dir: Path) -> str | None:
    jinja = checkpoint_dir / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text()
    as_json = checkpoint_dir / "chat_template.json"
    if as_json.exists():
        return json.loads(as_json.read_text()).get("chat_template")
    return None
