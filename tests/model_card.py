"""The published InternVL chat path, written out in the test tree from the published code's
structure and sharing nothing with dvd-serve's: `conversation.py`'s `internvl2_5` template (MPT
separator style), the query `model.chat` builds, and the model cards' `load_image`
(`dynamic_preprocess` + `build_transform`). torchvision is not installed here, so the cards'
`T.Resize` / `T.ToTensor` / `T.Normalize` are spelled out as what they do to a PIL image:
`Image.resize(size, BICUBIC)` (a no-op at 448x448), `uint8 -> float32 / 255`, `(x - mean) / std`."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMG_START_TOKEN, IMG_END_TOKEN, IMG_CONTEXT_TOKEN = "<img>", "</img>", "<IMG_CONTEXT>"
INTERNVL2_5_SYSTEM = ("你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位"
                      "联合开发的多模态大语言模型。")


class Conversation:
    """conversation.py's Conversation, reduced to the MPT style `internvl2_5` uses."""

    def __init__(self) -> None:
        self.system_template = "<|im_start|>system\n{system_message}"
        self.system_message = INTERNVL2_5_SYSTEM
        self.roles = ("<|im_start|>user\n", "<|im_start|>assistant\n")
        self.sep = "<|im_end|>\n"
        self.messages: list[list] = []

    def append_message(self, role: str, message: str | None) -> None:
        self.messages.append([role, message])

    def get_prompt(self) -> str:
        system_prompt = self.system_template.format(system_message=self.system_message)
        ret = system_prompt + self.sep
        for role, message in self.messages:
            if message:
                ret += role + message + self.sep
            else:
                ret += role
        return ret


def model_chat_query(question: str, history: list[tuple[str, str]] | None, num_patches_list: list[int],
                     system_message: str | None = None, num_image_token: int = 256) -> str:
    """The query string `model.chat(tokenizer, pixel_values, question, history=history,
    num_patches_list=num_patches_list)` tokenizes (after `model.system_message = system_message`)."""
    if history is None and num_patches_list and "<image>" not in question:
        question = "<image>\n" + question
    template = Conversation()
    if system_message is not None:
        template.system_message = system_message
    for old_question, old_answer in history or []:
        template.append_message(template.roles[0], old_question)
        template.append_message(template.roles[1], old_answer)
    template.append_message(template.roles[0], question)
    template.append_message(template.roles[1], None)
    query = template.get_prompt()
    for num_patches in num_patches_list:
        image_tokens = IMG_START_TOKEN + IMG_CONTEXT_TOKEN * num_image_token * num_patches + IMG_END_TOKEN
        query = query.replace("<image>", image_tokens, 1)
    return query


def chat_args(conversation: list[dict]) -> tuple[str, list[tuple[str, str]], str | None]:
    """(question, history, system_message) for an HF-form conversation, each image written
    "<image>\\n" where it stands (as the cards write "<image>\\n" + question, "Frame1: <image>\\n")."""
    turns = [(m["role"], "".join("<image>\n" if c["type"] == "image" else c["text"] for c in m["content"]))
             for m in conversation]
    system = turns.pop(0)[1] if turns[0][0] == "system" else None
    *earlier, (role, question) = turns
    assert role == "user" and len(earlier) % 2 == 0
    history = [(q, a) for (r1, q), (r2, a) in zip(earlier[0::2], earlier[1::2]) if (r1, r2) == ("user", "assistant")]
    assert len(history) * 2 == len(earlier), "turns must alternate user / assistant"
    return question, history, system


def find_closest_aspect_ratio(aspect_ratio, target_ratios, width, height, image_size):
    best_ratio_diff = float("inf")
    best_ratio = (1, 1)
    area = width * height
    for ratio in target_ratios:
        target_aspect_ratio = ratio[0] / ratio[1]
        ratio_diff = abs(aspect_ratio - target_aspect_ratio)
        if ratio_diff < best_ratio_diff:
            best_ratio_diff = ratio_diff
            best_ratio = ratio
        elif ratio_diff == best_ratio_diff:
            if area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
                best_ratio = ratio
    return best_ratio


def card_target_ratios(min_num: int, max_num: int) -> list[tuple[int, int]]:
    target_ratios = set(
        (i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1) if
        i * j <= max_num and i * j >= min_num)
    return sorted(target_ratios, key=lambda x: x[0] * x[1])


def card_grid(width: int, height: int, min_num: int, max_num: int, image_size: int = 448) -> tuple[int, int]:
    target_ratios = card_target_ratios(min_num, max_num)
    return find_closest_aspect_ratio(width / height, target_ratios, width, height, image_size)


def dynamic_preprocess(image, min_num=1, max_num=12, image_size=448, use_thumbnail=False):
    orig_width, orig_height = image.size
    target_aspect_ratio = card_grid(orig_width, orig_height, min_num, max_num, image_size)
    target_width = image_size * target_aspect_ratio[0]
    target_height = image_size * target_aspect_ratio[1]
    blocks = target_aspect_ratio[0] * target_aspect_ratio[1]
    resized_img = image.resize((target_width, target_height))
    processed_images = []
    for i in range(blocks):
        box = (
            (i % (target_width // image_size)) * image_size,
            (i // (target_width // image_size)) * image_size,
            ((i % (target_width // image_size)) + 1) * image_size,
            ((i // (target_width // image_size)) + 1) * image_size,
        )
        processed_images.append(resized_img.crop(box))
    if use_thumbnail and len(processed_images) != 1:
        processed_images.append(image.resize((image_size, image_size)))
    return processed_images


def transform(img: Image.Image, input_size: int = 448) -> torch.Tensor:
    """build_transform: RGB, Resize((448, 448), BICUBIC), ToTensor, Normalize -> [3, 448, 448]."""
    img = img.convert("RGB") if img.mode != "RGB" else img
    img = img.resize((input_size, input_size), Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
    mean = torch.as_tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.as_tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]
    return x.sub_(mean).div_(std)


def load_image(data: bytes, input_size: int = 448, max_num: int = 12, min_num: int = 1,
               use_thumbnail: bool = True) -> torch.Tensor:
    """The cards' load_image (min_num exposed, as dynamic_preprocess takes it) -> [N, 3, 448, 448]."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    images = dynamic_preprocess(image, min_num=min_num, image_size=input_size, use_thumbnail=use_thumbnail,
                                max_num=max_num)
    return torch.stack([transform(image) for image in images])
