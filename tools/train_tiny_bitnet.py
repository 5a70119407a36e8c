#!/usr/bin/env python3
"""train_tiny_bitnet.py: train the small BitNet b1.58 model bundled as
models/tiny-bitnet-trained-i2s.gguf, from scratch, on the CPU.

Quantization-aware training as in the BitNet b1.58 papers: every projection of
every block is a BitLinear whose forward pass uses absmean ternary weights
(codes = round(W / mean|W|) clamped to [-1, 1], times mean|W| rounded to bf16)
and per-token absmax int8 activations (s = 127 / max|x|, round half to even,
clamp [-128, 127]), with a straight-through estimator for both. The block is
the microsoft/bitnet-b1.58-2B-4T one: RMSNorm -> q,k,v -> NEOX RoPE -> causal
GQA attention -> attn_sub_norm -> o_proj -> residual; RMSNorm -> relu(gate)^2 *
up -> ffn_sub_norm -> down_proj -> residual; final RMSNorm; tied embeddings as
the (full-precision) LM head.

Install (a venv is enough; CPU only):
    python3 -m venv /tmp/trainenv
    /tmp/trainenv/bin/pip install torch==2.15.0 tokenizers==0.23.3 safetensors==0.8.0 numpy
    (transformers==5.24.0 accelerate==1.15.0 are only needed to check the export)
Corpus (Debian packages, see tools/make_corpus.py):
    python3 tools/make_corpus.py --out /work/corpus
Train + export (the bundled model: 1 thread, ~65 minutes on a 2-core x86-64):
    /tmp/trainenv/bin/python tools/train_tiny_bitnet.py --corpus /work/corpus \
        --work /work/train-run --export /work/trained-ckpt \
        --hidden 256 --ffn 768 --layers 4 --heads 4 --kv 2 --ctx 256 --theta 10000 \
        --batch 8 --steps 2600 --lr 2e-3 --warmup 100 --eval-every 200 --ckpt-every 100 \
        --max-minutes 72 --seed 1234 --threads 1
    (--work keeps tokenizer.json, ckpt.pt (every 100 steps) and train.log; rerunning
    the same command resumes from ckpt.pt)
Convert with our own converter:
    bitnet-cli convert /work/trained-ckpt -o models/tiny-bitnet-trained-i2s.gguf

Sub-commands of the same script: `--export-only` re-exports the last
checkpoint in --work (e.g. after a stop); `--check-export` loads the export with
transformers and compares its logits with the training model in eval mode.
Seeded (torch, numpy batch sampler); one CPU thread.
"""
import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------
# Tokenizer (byte-level BPE, Llama-3 split, BitNet / Llama-3 special tokens)
# ----------------------------------------------------------------------------

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIALS = [
    "<|begin_of_text|>", "<|end_of_text|>",
    "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|reserved_special_token_2|>", "<|reserved_special_token_3|>",
    "<|start_header_id|>", "<|end_header_id|>",
    "<|reserved_special_token_4|>", "<|eot_id|>",
    "<|reserved_special_token_5|>", "<|reserved_special_token_6|>",
    "<|reserved_special_token_7|>", "<|reserved_special_token_8|>",
    "<|reserved_special_token_9|>", "<|reserved_special_token_10|>",
]
VOCAB_SIZE = 4096
N_REGULAR = VOCAB_SIZE - len(SPECIALS)  # 4080 = 256 bytes + 3824 merges
BOS_ID, EOS_ID, EOT_ID = N_REGULAR, N_REGULAR + 1, N_REGULAR + 9
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}Assistant: {% endif %}"
)


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) + list(
        range(ord("\u00ae"), ord("\u00ff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def build_tokenizer(texts):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    def pre():
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ])

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre()
    trainer = trainers.BpeTrainer(vocab_size=N_REGULAR, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(texts, trainer=trainer)
    trained = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    # canonical ids (independent of the trainer's hash order): bytes in byte order, then merges in order
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    for a, b in merges:
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
    assert set(vocab) == set(trained["vocab"]) and len(vocab) == N_REGULAR, len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False, byte_fallback=False,
                               ignore_merges=True))
    tok.normalizer = None
    tok.pre_tokenizer = pre()
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False, lstrip=False, rstrip=False,
                                       single_word=False) for s in SPECIALS])
    assert tok.token_to_id(SPECIALS[0]) == BOS_ID and tok.get_vocab_size(with_added_tokens=True) == VOCAB_SIZE
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A:0",
                                      pair="<|begin_of_text|> $A:0 <|begin_of_text|>:1 $B:1",
                                      special_tokens=[("<|begin_of_text|>", BOS_ID)]),
    ])
    return tok


def write_tokenizer_files(tok, d: Path, max_len):
    d.mkdir(parents=True, exist_ok=True)
    tok.save(str(d / "tokenizer.json"), pretty=False)
    added = {str(N_REGULAR + i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                                  "single_word": False, "special": True} for i, s in enumerate(SPECIALS)}
    cfg = {
        "added_tokens_decoder": added,
        "bos_token": "<|begin_of_text|>",
        # a base model: documents end with <|end_of_text|> in training, so that is its EOS
        # (bitnet-cli convert writes it as tokenizer.ggml.eos_token_id; <|eot_id|> stays the EOT token)
        "eos_token": "<|end_of_text|>",
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": max_len,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (d / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------
# Model (QAT forward = inference forward of the exported checkpoint)
# ----------------------------------------------------------------------------

RMS_EPS = 1e-5


def weight_quant(w):
    """absmean ternary: codes in {-1,0,1}, scale = mean|W| rounded to bf16 (what the file stores)."""
    s = w.abs().mean().clamp(min=1e-5)
    s_bf = s.to(torch.bfloat16).float()
    codes = torch.clamp(torch.round(w / s), -1, 1)
    return codes, s_bf


def act_quant(x):
    """per-token absmax int8 (127 / max|x|, round half to even, clamp [-128, 127]), dequantized."""
    s = 127.0 / x.abs().amax(-1, keepdim=True).clamp(min=1e-5)
    return torch.clamp(torch.round(x * s), -128, 127) / s


class BitLinear(nn.Linear):
    def __init__(self, i, o):
        super().__init__(i, o, bias=False)

    def forward(self, x):
        w = self.weight
        codes, s = weight_quant(w)
        wq = w + (codes * s - w).detach()          # STE
        xq = x + (act_quant(x) - x).detach()       # STE
        return F.linear(xq, wq)


class RMSNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + RMS_EPS))


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        H, F_, nh, nkv = c["hidden"], c["ffn"], c["heads"], c["kv"]
        hd = H // nh
        self.nh, self.nkv, self.hd = nh, nkv, hd
        self.input_layernorm = RMSNorm(H)
        self.q_proj, self.k_proj = BitLinear(H, nh * hd), BitLinear(H, nkv * hd)
        self.v_proj, self.o_proj = BitLinear(H, nkv * hd), BitLinear(nh * hd, H)
        self.attn_sub_norm = RMSNorm(nh * hd)
        self.post_attention_layernorm = RMSNorm(H)
        self.gate_proj, self.up_proj, self.down_proj = BitLinear(H, F_), BitLinear(H, F_), BitLinear(F_, H)
        self.ffn_sub_norm = RMSNorm(F_)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(B, T, self.nh, self.hd).transpose(1, 2)
        k = self.k_proj(h).view(B, T, self.nkv, self.hd).transpose(1, 2)
        v = self.v_proj(h).view(B, T, self.nkv, self.hd).transpose(1, 2)

        def rope(z):  # NEOX: dim i pairs with i + hd/2
            a, b = z[..., : self.hd // 2], z[..., self.hd // 2:]
            return torch.cat([a * cos - b * sin, b * cos + a * sin], -1)

        q, k = rope(q), rope(k)
        g = self.nh // self.nkv
        k = k.repeat_interleave(g, dim=1)
        v = v.repeat_interleave(g, dim=1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        a = a.transpose(1, 2).reshape(B, T, self.nh * self.hd)
        x = x + self.o_proj(self.attn_sub_norm(a))
        h = self.post_attention_layernorm(x)
        m = torch.relu(self.gate_proj(h)).square() * self.up_proj(h)
        return x + self.down_proj(self.ffn_sub_norm(m))


class TinyBitNet(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.embed_tokens = nn.Embedding(VOCAB_SIZE, c["hidden"])
        self.layers = nn.ModuleList([Block(c) for _ in range(c["layers"])])
        self.norm = RMSNorm(c["hidden"])
        hd = c["hidden"] // c["heads"]
        inv = 1.0 / (c["theta"] ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
        ang = torch.arange(c["ctx"], dtype=torch.float32)[:, None] * inv[None, :]
        emb = torch.cat([ang, ang], -1)
        self.register_buffer("cos", emb.cos()[:, : hd // 2], persistent=False)
        self.register_buffer("sin", emb.sin()[:, : hd // 2], persistent=False)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, ids):
        T = ids.shape[1]
        x = self.embed_tokens(ids)
        cos, sin = self.cos[:T], self.sin[:T]
        for blk in self.layers:
            x = blk(x, cos, sin)
        return F.linear(self.norm(x), self.embed_tokens.weight)  # tied, full precision


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------

MIX = {"kjv": 0.45, "wordnet": 0.45, "devil": 0.10}  # sampling weight per source group
HELDOUT_EVERY = 40  # every 40th document of each source is held out


def src_group(s):
    return "wordnet" if s.startswith("wordnet") else s


def load_docs(corpus):
    docs = [json.loads(l) for l in open(Path(corpus) / "corpus.jsonl", encoding="utf-8")]
    train, held = {}, {}
    count = {}
    for d in docs:
        g = src_group(d["src"])
        i = count.get(g, 0)
        count[g] = i + 1
        (held if i % HELDOUT_EVERY == HELDOUT_EVERY - 1 else train).setdefault(g, []).append(d["text"])
    return train, held


class Stream:
    """All documents of one source as one token stream, each followed by <|end_of_text|>."""

    def __init__(self, tok, texts):
        enc = tok.encode_batch(texts, add_special_tokens=False)
        parts, starts, pos = [], [], 0
        for e in enc:
            starts.append(pos)
            parts.append(np.array(e.ids + [EOS_ID], dtype=np.int32))
            pos += len(e.ids) + 1
        self.ids = np.concatenate(parts)
        self.starts = np.array(starts, dtype=np.int64)


def sample_batch(rng, streams, batch, ctx):
    """Each row: <|begin_of_text|> + ctx tokens of one source; half of the rows start at a document start."""
    names = list(MIX)
    w = np.array([MIX[n] for n in names])
    rows = []
    for _ in range(batch):
        s = streams[names[rng.choice(len(names), p=w / w.sum())]]
        if rng.random() < 0.5:
            off = int(s.starts[rng.integers(len(s.starts))])
        else:
            off = int(rng.integers(len(s.ids)))
        off = min(off, len(s.ids) - ctx)
        rows.append(np.concatenate([[BOS_ID], s.ids[off: off + ctx]]))
    return torch.from_numpy(np.stack(rows).astype(np.int64))


def heldout_batches(streams, ctx, per_source=48, batch=16):
    """Fixed held-out windows: per source, evenly spaced windows (BOS + ctx tokens); weighted like MIX."""
    out = []
    for n in MIX:
        s = streams[n]
        offs = np.linspace(0, len(s.ids) - ctx - 1, per_source).astype(np.int64)
        rows = [np.concatenate([[BOS_ID], s.ids[o: o + ctx]]) for o in offs]
        for i in range(0, len(rows), batch):
            out.append((n, torch.from_numpy(np.stack(rows[i:i + batch]).astype(np.int64))))
    return out


@torch.no_grad()
def evaluate(model, hb):
    model.eval()
    tot = {}
    for n, x in hb:
        lg = model(x[:, :-1])
        l = F.cross_entropy(lg.reshape(-1, VOCAB_SIZE), x[:, 1:].reshape(-1), reduction="sum").item()
        a, b = tot.get(n, (0.0, 0))
        tot[n] = (a + l, b + x[:, 1:].numel())
    model.train()
    per = {n: a / b for n, (a, b) in tot.items()}
    mix = sum(MIX[n] * per[n] for n in per) / sum(MIX[n] for n in per)
    return mix, per


# ----------------------------------------------------------------------------
# Export: microsoft/bitnet-b1.58-2B-4T Hugging Face layout
# ----------------------------------------------------------------------------

def pack_ternary(w: np.ndarray) -> np.ndarray:
    """int8 {-1,0,1} [M, K] -> uint8 [M/4, K]; byte [i,k] bits 2j..2j+1 = w[j*M/4 + i, k] + 1."""
    m, k = w.shape
    assert m % 4 == 0
    r = m // 4
    codes = (w.astype(np.int16) + 1).astype(np.uint8)
    out = np.zeros((r, k), dtype=np.uint8)
    for j in range(4):
        out |= codes[j * r:(j + 1) * r] << (2 * j)
    return out


def config_json(c):
    return {
        "architectures": ["BitNetForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "hidden_act": "relu2",
        "hidden_size": c["hidden"],
        "initializer_range": 0.02,
        "intermediate_size": c["ffn"],
        "max_position_embeddings": c["ctx"],
        "model_type": "bitnet",
        "num_attention_heads": c["heads"],
        "num_hidden_layers": c["layers"],
        "num_key_value_heads": c["kv"],
        "quantization_config": {"linear_class": "autobitlinear", "quant_method": "bitnet",
                                "quantization_mode": "offline"},
        "rms_norm_eps": RMS_EPS,
        "rope_theta": c["theta"],
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": VOCAB_SIZE,
    }


def export_hf(model, tok, out: Path, meta):
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    c = model.c
    sd = {}
    bf = lambda t: t.detach().float().to(torch.bfloat16).contiguous()
    sd["model.embed_tokens.weight"] = bf(flush_tiny(model.embed_tokens.weight))
    sd["model.norm.weight"] = bf(model.norm.weight)
    for l, blk in enumerate(model.layers):
        p = f"model.layers.{l}."
        sd[p + "input_layernorm.weight"] = bf(blk.input_layernorm.weight)
        sd[p + "post_attention_layernorm.weight"] = bf(blk.post_attention_layernorm.weight)
        sd[p + "self_attn.attn_sub_norm.weight"] = bf(blk.attn_sub_norm.weight)
        sd[p + "mlp.ffn_sub_norm.weight"] = bf(blk.ffn_sub_norm.weight)
        for mod, names in (("self_attn.", ["q_proj", "k_proj", "v_proj", "o_proj"]),
                           ("mlp.", ["gate_proj", "up_proj", "down_proj"])):
            for n in names:
                codes, s = weight_quant(getattr(blk, n).weight.detach().float())
                sd[p + mod + n + ".weight"] = torch.from_numpy(pack_ternary(codes.to(torch.int8).numpy()))
                sd[p + mod + n + ".weight_scale"] = s.reshape(1).to(torch.bfloat16)
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config_json(c), indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": BOS_ID, "eos_token_id": [EOS_ID, EOT_ID], "do_sample": False}, indent=2) + "\n")
    write_tokenizer_files(tok, out, c["ctx"])
    (out / "training_meta.json").write_text(json.dumps(meta, indent=1) + "\n")


def flush_tiny(e):
    """Embedding values below F16's smallest normal (2^-14) set to 0, so that the bf16
    embeddings convert to F16 exactly (GGUF --embedding-type f16 like 2B4T); the change is
    below 6.1e-5 per element, invisible in the held-out loss."""
    e = e.detach().float().clone()
    e[e.abs() < 2.0 ** -14] = 0.0
    return e


def bf16_model(model):
    """The training model with embeddings and norms rounded to bf16, as exported (for checks)."""
    import copy

    m = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if not isinstance(dict(m.named_modules())[name.rsplit(".", 1)[0]], BitLinear):
                p.copy_(p.to(torch.bfloat16).float())
        m.embed_tokens.weight.copy_(flush_tiny(m.embed_tokens.weight).to(torch.bfloat16).float())
    return m.eval()


@torch.no_grad()
def check_export(model, d: Path, tok):
    os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")
    from transformers import BitNetForCausalLM

    hf = BitNetForCausalLM.from_pretrained(str(d), dtype=torch.float32, attn_implementation="eager",
                                           device_map="cpu").to(torch.float32).eval()
    ref = bf16_model(model)
    texts = ["Once upon a time", "And God said, Let there be light", "dog: a member of the genus Canis"]
    worst, agree, n = 0.0, 0, 0
    for t in texts:
        ids = torch.tensor([tok.encode(t).ids])
        a = hf(input_ids=ids, use_cache=False).logits[0]
        b = ref(ids)[0]
        worst = max(worst, float((a - b).abs().max()))
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        n += ids.shape[1]
    std = float(b.std())
    print(f"export check: max |hf - train(eval, bf16)| logit = {worst:.4g} (logit std {std:.3g}), "
          f"argmax agree {agree}/{n}")
    return worst, agree, n


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------

def lr_at(step, a):
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    p = (step - a.warmup) / max(1, a.steps - a.warmup)
    return a.lr * (a.min_lr_frac + (1 - a.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="/work/corpus")
    ap.add_argument("--work", default="/work/train-run")
    ap.add_argument("--export", default="/work/trained-ckpt")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--ffn", type=int, default=768)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--theta", type=float, default=10000.0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--wd", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--ckpt-every", type=int, default=100)
    ap.add_argument("--max-minutes", type=float, default=0, help="stop early (and export) after this wall time")
    ap.add_argument("--export-only", action="store_true")
    ap.add_argument("--check-export", action="store_true")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    random.seed(a.seed)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    c = dict(hidden=a.hidden, ffn=a.ffn, layers=a.layers, heads=a.heads, kv=a.kv, ctx=a.ctx, theta=a.theta)

    from tokenizers import Tokenizer

    train_txt, held_txt = load_docs(a.corpus)
    tok_path = work / "tokenizer.json"
    if not tok_path.exists():
        t0 = time.time()
        tok = build_tokenizer([t for g in train_txt.values() for t in g])
        tok.save(str(tok_path), pretty=False)
        print(f"tokenizer: {VOCAB_SIZE} tokens trained in {time.time() - t0:.1f}s", flush=True)
    tok = Tokenizer.from_file(str(tok_path))
    train = {n: Stream(tok, v) for n, v in train_txt.items()}
    held = {n: Stream(tok, v) for n, v in held_txt.items()}
    ntok = {n: int(len(s.ids)) for n, s in train.items()}
    print("train tokens per source:", ntok, "held-out:", {n: int(len(s.ids)) for n, s in held.items()}, flush=True)
    hb = heldout_batches(held, a.ctx)

    model = TinyBitNet(c)
    print(f"params: {n_params(model):,} (ternary {sum(m.weight.numel() for m in model.modules() if isinstance(m, BitLinear)):,})",
          flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n]
    other = [p for n, p in model.named_parameters() if not (p.dim() == 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.wd}, {"params": other, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    rng = np.random.default_rng(a.seed)
    step, log = 0, []
    ck = work / "ckpt.pt"
    if ck.exists():
        s = torch.load(ck, weights_only=False)
        model.load_state_dict(s["model"])
        opt.load_state_dict(s["opt"])
        rng.bit_generator.state = s["rng"]
        step, log = s["step"], s["log"]
        print(f"resumed at step {step}", flush=True)

    def meta(final_eval=None):
        return {"config": c, "vocab_size": VOCAB_SIZE, "params": n_params(model), "steps": step,
                "batch": a.batch, "tokens_seen": step * a.batch * a.ctx, "lr": a.lr, "warmup": a.warmup,
                "min_lr_frac": a.min_lr_frac, "weight_decay": a.wd, "seed": a.seed, "mix": MIX,
                "train_tokens": ntok, "train_seconds": sum(e.get("dt", 0) for e in log),
                "heldout": final_eval, "log": log, "torch": torch.__version__}

    if not (a.export_only or a.check_export):
        t_start = time.time()
        t_last = time.time()
        model.train()
        losses = []
        while step < a.steps:
            for g in opt.param_groups:
                g["lr"] = lr_at(step, a)
            # two-stage weight decay (BitNet b1.58 2B4T): none in the second half
            opt.param_groups[0]["weight_decay"] = a.wd if step < a.steps // 2 else 0.0
            x = sample_batch(rng, train, a.batch, a.ctx)
            lg = model(x[:, :-1])
            loss = F.cross_entropy(lg.reshape(-1, VOCAB_SIZE), x[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            losses.append(loss.item())
            if step % 10 == 0:
                dt = time.time() - t_last
                t_last = time.time()
                tps = 10 * a.batch * a.ctx / dt
                e = {"step": step, "loss": round(float(np.mean(losses)), 4), "lr": round(lr_at(step - 1, a), 6),
                     "dt": round(dt, 2), "tok_s": round(tps)}
                losses = []
                if step % a.eval_every == 0 or step == a.steps:
                    hl, per = evaluate(model, hb)
                    e["heldout"] = round(hl, 4)
                    e["heldout_per_source"] = {k: round(v, 4) for k, v in per.items()}
                    t_last = time.time()
                log.append(e)
                print(json.dumps(e), flush=True)
            if step % a.ckpt_every == 0 or step == a.steps:
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "rng": rng.bit_generator.state,
                            "step": step, "log": log, "config": c}, str(ck) + ".tmp")
                os.replace(str(ck) + ".tmp", ck)
            if a.max_minutes and time.time() - t_start > a.max_minutes * 60:
                print(f"stopping at step {step}: --max-minutes reached", flush=True)
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "rng": rng.bit_generator.state,
                            "step": step, "log": log, "config": c}, ck)
                break

    model.eval()
    hl, per = evaluate(model, hb)
    ref_hl, _ = evaluate(bf16_model(model), hb)
    final = {"loss": round(hl, 4), "ppl": round(math.exp(hl), 2),
             "per_source_loss": {k: round(v, 4) for k, v in per.items()},
             "per_source_ppl": {k: round(math.exp(v), 2) for k, v in per.items()},
             "loss_as_exported_bf16": round(ref_hl, 4), "ppl_as_exported_bf16": round(math.exp(ref_hl), 2),
             "tokens": {n: int(sum(x.numel() - x.shape[0] for m, x in hb if m == n)) for n in MIX},
             "note": "mean next-token cross-entropy (nats) over fixed held-out windows (every 40th document), "
                     "sources weighted as in training"}
    print("held-out:", json.dumps(final), flush=True)
    export_hf(model, tok, Path(a.export), meta(final))
    print(f"exported to {a.export}", flush=True)
    if a.check_export:
        check_export(model, Path(a.export), tok)


if __name__ == "__main__":
    main()
