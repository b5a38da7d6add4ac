"""`make_checkpoint`: write a seeded random-init InternVL checkpoint in the real HF on-disk format.

Every file is produced by the transformers class that reads it back (model, config, tokenizer,
image processor, generation config `save_pretrained`), so the directory opens through the same
Auto classes and code paths as OpenGVLab/InternVL3-1B-hf. Two files are written by hand:
`processor_config.json`, because transformers 5.23 cannot construct InternVLProcessor without
torchvision (see `processor.py`), and nothing else here would write it; and the
`preprocessor_config.json` `processor_class` field, which the image processor has no setter for.

Flash presets write the original `InternVLChatModel` layout instead: the same model plus the ViR
router and mlp2 (`vision_service.vir.FlashHeads`), under original keys (`original.original_state`)
with the original config.json (`original.original_config`), as OpenGVLab's Flash repos ship them.
"""

import json
import shutil
import tempfile
from pathlib import Path

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors.torch import save_file
from transformers import GenerationConfig, GotOcr2ImageProcessorPil, InternVLForConditionalGeneration
from transformers.initialization import no_init_weights

from dvd.checkpoint.errors import CheckpointError
from dvd.checkpoint.load import INDEX_FILE
from dvd.checkpoint.original import original_config, original_state
from vision_service.vir import FlashHeads

from .presets import IMAGE_SEQ_LENGTH, IMAGE_SIZE, PRESETS, Preset, embedding_rows, get_preset, internvl_config
from .random_init import init_weights_
from .tokenizer import build_tokenizer

# InternVL's ImageNet normalisation (the GotOcr2 class defaults are CLIP's, so they are set here).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_TILES = 12
# The special tokens config.json / generation_config.json refer to by id.
CONFIG_TOKENS = ("<|endoftext|>", "<|im_end|>", "<IMG_CONTEXT>")


def preset_names() -> list[str]:
    """The names `make_checkpoint` accepts, for CLI choices."""
    return sorted(PRESETS)


def make_checkpoint(preset: str, out_dir: str | Path, seed: int = 0, *, max_shard_size: str | None = None) -> Path:
    """Write the random-init checkpoint of `preset` into `out_dir` and return its path.

    Same preset and seed give byte-identical tensors and tokenizer files. `max_shard_size`
    (e.g. "1MB") overrides the preset's sharding; shards come with model.safetensors.index.json.
    The directory is written next to `out_dir` first and renamed into place, so a crash never
    leaves a half-written checkpoint that later loads fail on confusingly.
    """
    spec = get_preset(preset)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise CheckpointError(f"{out_dir} exists and is not empty; refusing to overwrite a checkpoint")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        write_checkpoint_files(spec, staging, seed, max_shard_size or spec.max_shard_size)
        _make_world_readable(staging)
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def write_checkpoint_files(spec: Preset, out_dir: Path, seed: int, max_shard_size: str | None) -> None:
    """Build the tokenizer, model and processors of `spec` and save them all into `out_dir`."""
    tokenizer = build_tokenizer(spec.bpe_vocab_size)
    token_ids = {token: tokenizer.convert_tokens_to_ids(token) for token in CONFIG_TOKENS}
    config = internvl_config(spec, vocab_size=embedding_rows(spec, len(tokenizer)), token_ids=token_ids)

    # Built directly in the on-disk dtype and without transformers' own init (every parameter is
    # overwritten below), so 1b-shape costs ~2 GB and seconds rather than ~5 GB and half a minute.
    with no_init_weights():
        model = InternVLForConditionalGeneration._from_config(config, dtype=getattr(torch, spec.dtype))
    special_ids = sorted(tokenizer.added_tokens_decoder)
    init_weights_(model, seed=seed, num_tokens=len(tokenizer), special_ids=special_ids)
    model.generation_config = GenerationConfig(
        bos_token_id=token_ids["<|endoftext|>"],
        eos_token_id=token_ids["<|im_end|>"],
        pad_token_id=token_ids["<|endoftext|>"],
    )
    # No shard size means one model.safetensors, whatever transformers' default shard size is.
    if spec.flash:
        _save_original_layout(model, spec, out_dir, seed, len(tokenizer), special_ids, max_shard_size or "1000GB")
    else:
        model.save_pretrained(out_dir, max_shard_size=max_shard_size or "1000GB")
    tokenizer.save_pretrained(out_dir)
    image_processor().save_pretrained(out_dir)
    _write_processor_files(out_dir)


def _save_original_layout(model: InternVLForConditionalGeneration, spec: Preset, out_dir: Path, seed: int,
                          num_tokens: int, special_ids: list[int], max_shard_size: str) -> None:
    """The InternVLChatModel layout of a Flash checkpoint: config.json, sharded safetensors, generation config."""
    config = model.config
    heads = FlashHeads(config.vision_config.hidden_size, config.text_config.hidden_size, config.downsample_ratio)
    heads.to(getattr(torch, spec.dtype))
    init_weights_(heads, seed=seed, num_tokens=num_tokens, special_ids=special_ids)
    state = original_state(model.state_dict(), heads.state_dict())
    shards = split_torch_state_dict_into_shards(state, max_shard_size=max_shard_size)
    for filename, names in shards.filename_to_tensors.items():
        save_file({name: state[name] for name in names}, out_dir / filename, metadata={"format": "pt"})
    if shards.is_sharded:
        index = {"metadata": shards.metadata, "weight_map": shards.tensor_to_filename}
        (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    raw = original_config(config, spec.dtype, flash=True)
    (out_dir / "config.json").write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    model.generation_config.save_pretrained(out_dir)


def _make_world_readable(directory: Path) -> None:
    # mkdtemp makes the directory 0700 and the safetensors writer leaves shards 0600; a checkpoint
    # is read by service containers running as other users, as hub snapshots (0644) are.
    directory.chmod(0o755)
    for path in directory.iterdir():
        path.chmod(0o644)


def image_processor() -> GotOcr2ImageProcessorPil:
    """InternVL3's image processor settings: dynamic 448px tiles (1-12 + thumbnail), ImageNet norm."""
    return GotOcr2ImageProcessorPil(
        crop_to_patches=True,
        min_patches=1,
        max_patches=MAX_TILES,
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        resample=3,  # PIL bicubic
        do_resize=True,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        do_convert_rgb=True,
    )


def _write_processor_files(out_dir: Path) -> None:
    # What InternVLProcessor.save_pretrained writes in the released checkpoint; the chat template
    # itself is already in chat_template.jinja (written with the tokenizer), where both
    # AutoTokenizer and AutoProcessor look for it.
    processor_config = {"image_seq_length": IMAGE_SEQ_LENGTH, "processor_class": "InternVLProcessor"}
    (out_dir / "processor_config.json").write_text(json.dumps(processor_config, indent=2, sort_keys=True) + "\n")
    preprocessor_path = out_dir / "preprocessor_config.json"
    preprocessor = json.loads(preprocessor_path.read_text())
    preprocessor["processor_class"] = "InternVLProcessor"
    preprocessor_path.write_text(json.dumps(preprocessor, indent=2, sort_keys=True) + "\n")
