"""Derive CLIP's tokenizer files (vocab.json, merges.txt) from the BPE merges list.

The merges ship inside the ``open_clip_torch`` wheel as ``bpe_simple_vocab_16e6.txt.gz``.
The output is committed in ``resources/clip_tokenizer/``; this script documents how it was made:

    pip download --no-deps open_clip_torch -d /tmp/oc && unzip -o /tmp/oc/*.whl -d /tmp/oc
    python tools/make_clip_tokenizer.py /tmp/oc/open_clip/bpe_simple_vocab_16e6.txt.gz
"""

import argparse
import gzip
import json
from pathlib import Path

from transformers.convert_slow_tokenizer import bytes_to_unicode

# CLIP uses the first 49152 - 256 - 2 merges: 256 bytes, 256 bytes + </w>, merges, 2 specials = 49408.
N_MERGES = 49152 - 256 - 2


def build(bpe_gz: Path) -> tuple[dict[str, int], list[str]]:
    lines = gzip.open(bpe_gz).read().decode("utf-8").split("\n")
    merges = lines[1 : N_MERGES + 1]
    byte_tokens = list(bytes_to_unicode().values())
    tokens = byte_tokens + [t + "</w>" for t in byte_tokens]
    tokens += ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bpe_gz", type=Path, help="path to bpe_simple_vocab_16e6.txt.gz")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent.parent / "resources" / "clip_tokenizer"
    )
    args = parser.parse_args()
    vocab, merges = build(args.bpe_gz)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (args.out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {args.out}")


if __name__ == "__main__":
    main()
