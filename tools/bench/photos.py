"""Images for `dvd bench vision`: a folder of real photos, the real photos that installed
packages ship (scikit-image's sample data, matplotlib's), or a synthetic size mix.

The packaged photos are small (300x451 to 1411x1411); PNG ones are re-encoded as JPEG
(quality 90), as photos arrive on the wire; shipped JPEGs stay as they are. None is at least twice
a tile canvas, so the large JPEGs that `--fast-decode` acts on are these photos upscaled (LANCZOS)
to 4K-class sizes and re-encoded: real content, but without the fine detail a real 4K photo has,
so the fidelity they show is an upper bound.
"""

from __future__ import annotations

import importlib.util
import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from tools.bench.workload import parse_sizes, synthetic_image

# Colour photographs among the sample images (the rest are grey-scale, drawings or textures).
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg", "retina.jpg",
                  "hubble_deep_field.jpg", "ihc.png")
MATPLOTLIB_PHOTOS = ("grace_hopper.jpg",)
LARGE_SIZES = ((3840, 2160), (4032, 3024), (2160, 3840))  # 4K UHD, a 12 MP phone photo, portrait 4K
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


@dataclass(frozen=True)
class Photo:
    name: str
    data: bytes  # the encoded file
    size: tuple[int, int]  # (width, height)


def _package_dir(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)), *parts)


def _as_jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _photo(name: str, data: bytes) -> Photo:
    return Photo(name, data, Image.open(io.BytesIO(data)).size)


def packaged_photos() -> list[Photo]:
    """The real colour photos shipped by scikit-image and matplotlib, where installed."""
    found = []
    for package, parts, names in (("skimage", ("data",), SKIMAGE_PHOTOS),
                                  ("matplotlib", ("mpl-data", "sample_data"), MATPLOTLIB_PHOTOS)):
        folder = _package_dir(package, *parts)
        for name in names if folder else ():
            path = folder / name
            if path.is_file():
                data = path.read_bytes()
                found.append(_photo(name, data if name.endswith(".jpg") else _as_jpeg(Image.open(path))))
    return found


def folder_photos(folder: Path) -> list[Photo]:
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise SystemExit(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return [_photo(p.name, p.read_bytes()) for p in paths]


def synthetic_photos(mix: str, count: int) -> list[Photo]:
    """`count` synthetic JPEGs drawn from a size mix (`tools.bench.workload.parse_sizes`)."""
    sizes = parse_sizes(mix)
    out = []
    for index in range(count):
        size = sizes[index % len(sizes)]
        out.append(Photo(f"synthetic-{size.width}x{size.height}-{index}", synthetic_image(size, index).data,
                         (size.width, size.height)))
    return out


def large_jpegs(photos: list[Photo]) -> list[Photo]:
    """Each 4K-class size from a photo (cycling through them), upscaled and re-encoded at quality 90."""
    out = []
    for index, (width, height) in enumerate(LARGE_SIZES):
        source = photos[index % len(photos)]
        image = Image.open(io.BytesIO(source.data)).convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
        out.append(Photo(f"{Path(source.name).stem}-up-{width}x{height}", _as_jpeg(image), (width, height)))
    return out


def variant(photo: Photo, index: int) -> bytes:
    """The photo re-encoded at a quality that differs per index: new bytes, so Encode misses the cache."""
    return _as_jpeg(Image.open(io.BytesIO(photo.data)), quality=95 - index % 20)
