"""An offline Qwen2-style tokenizer for the random-init checkpoints.

No tokenizer can be downloaded here, so this trains a byte-level BPE on `corpus.training_corpus()`
with exactly Qwen2's pipeline (NFC, Qwen2's pre-tokenizer regex, ByteLevel without prefix space,
ByteLevel decoder), then appends the Qwen2.5-VL and InternVL special tokens in their real relative
order. Loaded through AutoTokenizer it is a `Qwen2Tokenizer` with the attributes InternVLProcessor
reads (start_image_token, end_image_token, context_image_token, video_token), as in the tokenizer
that transformers' InternVL conversion writes.
"""

import json

from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
from tokenizers.models import BPE
from transformers import AddedToken, Qwen2Tokenizer

from .corpus import training_corpus

# transformers.models.qwen2.tokenization_qwen2.PRETOKENIZE_REGEX, repeated so the training pipeline
# is visibly the one Qwen2Tokenizer rebuilds at load time; a test checks that they agree.
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# (token, special) in Qwen2.5-VL's order (ids 151643..151664 there), then InternVL's additions
# (151665..151673), then <video>, which the HF InternVL processor expands into per-frame
# <img>...</img> blocks before the model sees it. Only the relative order is kept: here they
# follow the small BPE vocabulary instead of starting at 151643.
SPECIAL_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<img>", True),
    ("</img>", True),
    ("<IMG_CONTEXT>", True),
    ("<quad>", True),
    ("</quad>", True),
    ("<ref>", True),
    ("</ref>", True),
    ("<box>", True),
    ("</box>", True),
    ("<video>", True),
)

# Named multimodal tokens, as the HF InternVL conversion passes them in `extra_special_tokens`.
MULTIMODAL_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}

# The chat template transformers' InternVL conversion attaches to InternVL3-*-hf.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}"
    "{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}"
    "{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "{{'<|im_end|>\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{'<|im_start|>assistant\n' }}"
    "{% endif %}"
)

# The conversion's CONTEXT_LENGTH for InternVL3.
MODEL_MAX_LENGTH = 8192


def train_bpe(vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train the byte-level BPE; returns (vocab, merges). Deterministic for a given size."""
    tokenizer = Tokenizer(BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        show_progress=False,
        # All 256 byte symbols up front, so any string (any script, emoji) stays encodable.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(training_corpus(), trainer=trainer)
    model = json.loads(tokenizer.to_str())["model"]
    return model["vocab"], [tuple(merge) for merge in model["merges"]]


def build_tokenizer(vocab_size: int) -> Qwen2Tokenizer:
    """A Qwen2Tokenizer over a freshly trained BPE, with the InternVL special tokens and template."""
    vocab, merges = train_bpe(vocab_size)
    # Special tokens go into the vocab at fixed ids after the BPE entries; registering them below
    # then keeps those ids instead of numbering them in whatever order the base class adds them.
    first_special_id = len(vocab)
    for offset, (token, _) in enumerate(SPECIAL_TOKENS):
        vocab[token] = first_special_id + offset
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        errors="replace",
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=MODEL_MAX_LENGTH,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        extra_special_tokens=dict(MULTIMODAL_TOKENS),
        chat_template=CHAT_TEMPLATE,
    )
    tokenizer.add_tokens([AddedToken(token, special=special, normalized=False) for token, special in SPECIAL_TOKENS])
    return tokenizer
