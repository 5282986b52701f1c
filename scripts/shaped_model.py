"""A randomly initialised model with a real model's shape and the tiny policy's tokenizer, to
time the harness at that size where the real weights cannot be fetched (the lent GPU machines
reach no hub). Its pass@1 is zero and it rarely stops early, so every rollout runs to
max_new_tokens: an upper bound on generation time, not a result.

    python scripts/shaped_model.py qwen2.5-3b TINY_DIR OUT_DIR [--device cuda]
    MODEL_DIR=OUT_DIR SMOKE_MAX_NEW_TOKENS=256 bash ci/gpu-smoke.sh
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

# Shapes from the models' published configs (Qwen2.5-3B/7B-Instruct: the 3B ties its input and
# output embeddings, the 7B does not); vocabulary: the tiny's.
SHAPES = {
    "qwen2.5-3b": {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
                   "num_attention_heads": 16, "num_key_value_heads": 2,
                   "tie_word_embeddings": True},
    "qwen2.5-7b": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                   "num_attention_heads": 28, "num_key_value_heads": 4,
                   "tie_word_embeddings": False},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shape", choices=sorted(SHAPES))
    ap.add_argument("tiny_dir", type=Path, help="a tiny policy build (its tokenizer is used)")
    ap.add_argument("out", type=Path)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tiny = json.loads((args.tiny_dir / "config.json").read_text())
    cfg = Qwen2Config(vocab_size=tiny["vocab_size"], max_position_embeddings=4096,
                      bos_token_id=tiny["bos_token_id"], eos_token_id=tiny["eos_token_id"],
                      pad_token_id=tiny["pad_token_id"],
                      **SHAPES[args.shape])
    torch.manual_seed(0)
    with torch.device(args.device):
        model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(args.out)
    for name in ("tokenizer.json", "tokenizer_config.json"):  # not recipe.json: not a tiny build
        if (args.tiny_dir / name).exists():
            shutil.copy(args.tiny_dir / name, args.out / name)
    n = sum(p.numel() for p in model.parameters())
    print(f"shaped_model: {args.shape} shape, {n / 1e9:.2f}B parameters, saved to {args.out}")


if __name__ == "__main__":
    main()
