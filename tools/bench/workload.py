"""Workloads for `dvd bench serve`: what each request carries, generated up front (outside the
timed window) and seeded, so the colocated and disaggregated runs of `dvd bench compare` see
byte-identical requests.

Images are synthetic (a seeded low-resolution noise field, upscaled and saved as JPEG at quality
90, so they compress like photographs rather than like noise) with sizes drawn from a weighted
distribution, or come from a folder of real images. Reuse: each image slot after the first
repeats, with probability `reuse`, an image already used earlier in the same workload (same bytes:
an embedding-cache hit once that earlier request has been encoded).
"""

from __future__ import annotations

import base64
import io
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vision_service.preprocess import ResolvedTiling, choose_grid

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
WORDS = ("the lighthouse keeper watched grey ships cross a cold northern sea while gulls circled "
         "above old harbour walls and the tide turned slowly under a pale morning sky").split()


@dataclass(frozen=True)
class ImageSize:
    width: int
    height: int
    weight: float = 1.0

    @property
    def tiles(self) -> int:
        return tiles_for(self.width, self.height)


def tiles_for(width: int, height: int) -> int:
    """Tiles InternVL's default dynamic tiling (1..12, thumbnail) cuts a width x height image into."""
    cols, rows = choose_grid(width, height, ResolvedTiling())
    return cols * rows + (1 if cols * rows > 1 else 0)


def parse_sizes(text: str) -> tuple[ImageSize, ...]:
    """`896x896` or a weighted mix `448x448:1,896x896:2,1344x1344:1`."""
    sizes = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        dims, _, weight = item.partition(":")
        width, sep, height = dims.partition("x")
        if not sep:
            raise ValueError(f"bad image size {item!r}: expected WIDTHxHEIGHT[:WEIGHT]")
        sizes.append(ImageSize(int(width), int(height), float(weight or 1)))
    if not sizes or any(s.width <= 0 or s.height <= 0 or s.weight <= 0 for s in sizes):
        raise ValueError(f"bad image sizes {text!r}")
    return tuple(sizes)


@dataclass(frozen=True)
class WorkloadSpec:
    image_sizes: tuple[ImageSize, ...] = (ImageSize(896, 896),)
    images_per_request: int = 1
    reuse: float = 0.0  # probability that an image slot repeats an earlier image, 0..1
    prompt_words: int = 32  # text prompt length in words (about as many tokens)
    output_tokens: int = 64  # exact: requests set ignore_eos
    image_dir: Path | None = None  # real images instead of synthetic ones
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.reuse <= 1.0:
            raise ValueError(f"reuse must be in [0, 1], got {self.reuse}")
        if self.images_per_request < 0 or self.prompt_words < 1 or self.output_tokens < 1:
            raise ValueError("need images_per_request >= 0, prompt_words >= 1, output_tokens >= 1")

    def describe(self) -> dict:
        return {"image_sizes": [f"{s.width}x{s.height}:{s.weight:g} ({s.tiles} tiles)" for s in self.image_sizes],
                "images_per_request": self.images_per_request, "reuse": self.reuse,
                "prompt_words": self.prompt_words, "output_tokens": self.output_tokens,
                "image_dir": str(self.image_dir) if self.image_dir else None, "seed": self.seed}


@dataclass(frozen=True)
class BenchImage:
    data: bytes
    tiles: int

    @property
    def data_url(self) -> str:
        mime = "image/png" if self.data.startswith(b"\x89PNG") else "image/jpeg"
        return f"data:{mime};base64,{base64.b64encode(self.data).decode()}"


@dataclass(frozen=True)
class BenchRequest:
    index: int
    prompt: str
    images: tuple[BenchImage, ...]
    data_urls: tuple[str, ...]  # the images base64-encoded once, for REST bodies
    max_tokens: int

    @property
    def num_tiles(self) -> int:
        return sum(image.tiles for image in self.images)


def synthetic_image(size: ImageSize, seed: int) -> BenchImage:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(size.height // 16, 2), max(size.width // 16, 2), 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((size.width, size.height), Image.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return BenchImage(buf.getvalue(), size.tiles)


class _ImageSource:
    """New images on demand: synthetic ones of a drawn size, or the folder's files in a shuffled cycle."""

    def __init__(self, spec: WorkloadSpec, rng: random.Random) -> None:
        self.spec, self.rng, self.count = spec, rng, 0
        self.files = sorted(p for p in spec.image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) \
            if spec.image_dir else []
        if spec.image_dir and not self.files:
            raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {spec.image_dir}")
        rng.shuffle(self.files)

    def new(self) -> BenchImage:
        self.count += 1
        if self.files:
            path = self.files[(self.count - 1) % len(self.files)]
            with Image.open(path) as image:
                width, height = image.size
            return BenchImage(path.read_bytes(), tiles_for(width, height))
        sizes = self.spec.image_sizes
        size = self.rng.choices(sizes, weights=[s.weight for s in sizes])[0]
        return synthetic_image(size, seed=self.rng.getrandbits(32))


def prompt_text(index: int, num_words: int) -> str:
    """A distinct prompt per request (no two requests share a text prefix past the first words)."""
    words = [WORDS[(index * 7 + i) % len(WORDS)] for i in range(num_words)]
    return f"Request {index}: " + " ".join(words)


def build_requests(spec: WorkloadSpec, num_requests: int, stream_seed: int = 0) -> list[BenchRequest]:
    """`num_requests` requests of `spec`. `stream_seed` varies the images between sweep points
    (so one point's images are never cache hits in the next) while keeping runs reproducible."""
    rng = random.Random(spec.seed * 1_000_003 + stream_seed)
    source = _ImageSource(spec, rng)
    used: list[BenchImage] = []
    requests = []
    for index in range(num_requests):
        images = []
        for _ in range(spec.images_per_request):
            reuse = used and rng.random() < spec.reuse
            images.append(rng.choice(used) if reuse else source.new())
            if not reuse:
                used.append(images[-1])
        requests.append(BenchRequest(index, prompt_text(index, spec.prompt_words), tuple(images),
                                     tuple(image.data_url for image in images), spec.output_tokens))
    return requests
