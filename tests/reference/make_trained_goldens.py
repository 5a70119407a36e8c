#!/usr/bin/env python3
# make_trained_goldens.py: greedy continuations and last-position logits of the
# bundled trained model (models/tiny-bitnet-trained-i2s.gguf), produced by
# Hugging Face `transformers` from the Hugging Face checkpoint the GGUF was
# converted from, written to tests/reference/trained_golden.json.
#
# Install: the same venv as make_goldens.py (torch 2.15.0, transformers 5.24.0,
# tokenizers 0.23.3, safetensors 0.8.0, accelerate 1.15.0, numpy).
# Run (from the repository root; the checkpoint comes from
# tools/train_tiny_bitnet.py, see docs/models/tiny-bitnet-trained.md):
#   /tmp/refenv/bin/python tests/reference/make_trained_goldens.py \
#       --ckpt /work/trained-ckpt --gguf models/tiny-bitnet-trained-i2s.gguf \
#       [--cli /path/to/bitnet-cli]
# With --cli it also runs our runtime greedily on every prompt and checks that
# its text is the decoded golden continuation (the Rust test compares ids).
#
# A prompt whose greedy path has a near-tie (top1 - top2 logit < MARGIN at some
# step) is recorded with "kept": false: int8 activation rounding can flip such a
# choice between two correct implementations.
import os

os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse
import hashlib
import json
import platform
import subprocess
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)

HERE = Path(__file__).resolve().parent
N_NEW = 24
MARGIN = 0.05
PROMPTS = [
    ("once", "Once upon a time"),
    ("beginning", "In the beginning God created"),
    ("king", "And it came to pass, when the king"),
    ("dog", "The dog barked"),
    ("gloss", "happiness:"),
    ("door", "She opened the door and"),
    ("river", "The river"),
    ("devil", "WAR, n."),
    ("said", "He said unto them,"),
    ("children", "The children played in the"),
    ("moses", "And the LORD spake unto Moses, saying,"),
    ("jesus", "Jesus answered and said"),
    ("psalm", "Praise ye the LORD."),
    ("wise", "A wise man"),
    ("house", "house:"),
    ("run", "run, go:"),
    ("water", "The water"),
    ("city", "They went into the city"),
    ("night", "It was a dark night"),
    ("friend", "My friend"),
    ("love", "LOVE, n."),
    ("bird", "a small bird"),
    ("tree", "tree: a tall perennial woody plant"),
    ("mother", "His mother said"),
    ("bread", "Give us bread"),
    ("light", "And God said, Let there be light"),
    ("book", "The book"),
    ("war", "war: the waging of armed conflict against an enemy."),
    ("hand", "He put forth his hand"),
    ("mountain", "Upon the mountain"),
    ("sea", "The ships of the sea"),
    ("money", "money:"),
]


def versions():
    import safetensors
    import tokenizers
    import transformers

    out = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "tokenizers": tokenizers.__version__, "safetensors": safetensors.__version__, "numpy": np.__version__}
    try:
        import accelerate

        out["accelerate"] = accelerate.__version__
    except ImportError:
        pass
    return out


def f32_list(t):
    return [float(str(np.float32(v))) for v in t.detach().float().numpy().tolist()]


def load_hf(d):
    from transformers import BitNetForCausalLM

    m = BitNetForCausalLM.from_pretrained(str(d), dtype=torch.float32, attn_implementation="eager", device_map="cpu")
    m = m.to(torch.float32)  # transformers 5.24 keeps bf16 embeddings/norms; bf16 -> f32 is exact
    m.eval()
    return m


def margins(lg):
    top = lg.topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


def run_cli(cli, gguf, text):
    r = subprocess.run([cli, "inference", "-m", gguf, "-p", text, "-n", str(N_NEW), "--temp", "0", "-t", "1", "--no-display-prompt"],
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    return r.stdout


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default="/work/trained-ckpt")
    ap.add_argument("--gguf", default="models/tiny-bitnet-trained-i2s.gguf")
    ap.add_argument("--cli", default=None)
    ap.add_argument("--out", default=str(HERE / "trained_golden.json"))
    a = ap.parse_args()

    from tokenizers import Tokenizer
    from transformers import GenerationConfig

    tok = Tokenizer.from_file(str(Path(a.ckpt) / "tokenizer.json"))
    cfg = json.loads((Path(a.ckpt) / "config.json").read_text())
    n_regular = cfg["vocab_size"] - 16
    model = load_hf(a.ckpt)
    gc = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=N_NEW, min_new_tokens=0, use_cache=True,
                          eos_token_id=None, bos_token_id=cfg["bos_token_id"], pad_token_id=cfg["eos_token_id"],
                          return_dict_in_generate=True, output_logits=True)
    prompts = []
    for label, text in PROMPTS:
        ids = tok.encode(text, add_special_tokens=True).ids
        x = torch.tensor([ids])
        lg = model(input_ids=x, use_cache=False).logits[0].float()
        gen = model.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=gc)
        new = gen.sequences[0].tolist()[len(ids):]
        step_logits = torch.stack([s[0].float() for s in gen.logits])
        assert torch.equal(step_logits.argmax(-1), torch.tensor(new))
        # teacher-forced full recompute (no cache) must pick the same ids
        full = model(input_ids=torch.tensor([ids + new[:-1]]), use_cache=False).logits[0].float()
        same_full = torch.equal(full[len(ids) - 1:].argmax(-1), torch.tensor(new))
        sm = margins(step_logits)
        mm = float(sm.min())
        special = [i for i, t in enumerate(new) if t >= n_regular]
        kept = mm >= MARGIN and same_full
        why = [] if mm >= MARGIN else [f"near-tie: min greedy-step margin {mm:.4f} < {MARGIN}"]
        if not same_full:
            why.append("transformers' own KV-cache and full-recompute argmax disagree along the path")
        e = {
            "label": label,
            "text": text,
            "input_ids": ids,
            "greedy_ids": new,
            "greedy_text": tok.decode(new, skip_special_tokens=False),
            "greedy_step_margins": [round(float(v), 4) for v in sm],
            "min_margin": round(mm, 4),
            "first_special_step": special[0] if special else None,
            "kept": kept,
            "dropped_because": why,
            "last_logits": f32_list(lg[-1]) if kept else None,  # kept prompts only (file size)
        }
        prompts.append(e)
        print(f"{label:10s} min margin {mm:7.4f} kept={kept} special@{e['first_special_step']}: "
              f"{text!r} -> {e['greedy_text']!r}", flush=True)

    cli_check = None
    if a.cli:
        cli_check = {"command": f"bitnet-cli inference -m {a.gguf} -p TEXT -n {N_NEW} --temp 0 -t 1 --no-display-prompt", "results": []}
        for e in prompts:
            out = run_cli(a.cli, a.gguf, e["text"])
            ids = e["greedy_ids"]
            if e["first_special_step"] is not None:
                ids = ids[: e["first_special_step"]]  # the CLI stops at an end-of-generation token
            want = tok.decode(ids, skip_special_tokens=True)
            ok = out == want or out.rstrip("\n") == want
            cli_check["results"].append({"label": e["label"], "kept": e["kept"], "match": ok,
                                         **({} if ok else {"cli_text": out})})
            print(f"cli {e['label']:10s} match={ok}" + ("" if ok else f"  cli={out!r} want={want!r}"), flush=True)

    gg = Path(a.gguf)
    doc = {
        "generated_by": "tests/reference/make_trained_goldens.py",
        "reference": "transformers BitNetForCausalLM.from_pretrained(HF checkpoint), CPU, float32, "
                     "attn_implementation=eager, TORCH_COMPILE_DISABLE=1; generate(do_sample=False, use_cache=True, "
                     "eos_token_id=None)",
        "versions": versions(),
        "gguf": str(gg),
        "gguf_sha256": hashlib.sha256(gg.read_bytes()).hexdigest() if gg.exists() else None,
        "hf_model_sha256": hashlib.sha256((Path(a.ckpt) / "model.safetensors").read_bytes()).hexdigest(),
        "config": {k: cfg[k] for k in ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                       "num_attention_heads", "num_key_value_heads", "rope_theta",
                                       "max_position_embeddings", "rms_norm_eps", "bos_token_id",
                                       "eos_token_id"]},
        "n_new": N_NEW,
        "margin_rule": f"kept iff top1 - top2 logit >= {MARGIN} at every greedy step",
        "notes": [
            "input_ids: tokenizer.json encode(text, add_special_tokens=True), i.e. <|begin_of_text|> + ids.",
            "greedy_ids: the N_NEW generated ids (no EOS stop; first_special_step is the index of the first "
            "special token among them, null if none).",
            "last_logits: float32 logits at the last prompt position (all vocab_size), shortest round-trip decimals; "
            "null for prompts that are not kept.",
            "greedy_step_margins[i]: top1 - top2 logit at generation step i (step 0 = last prompt position).",
        ],
        "kept_count": sum(e["kept"] for e in prompts),
        "cli_check": cli_check,
        "prompts": prompts,
    }
    Path(a.out).write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {a.out}: {doc['kept_count']}/{len(prompts)} prompts kept")


if __name__ == "__main__":
    main()
