#!/usr/bin/env python3
# make_goldens.py: tiny BitNet b1.58 reference checkpoints and golden outputs,
# produced by Hugging Face `transformers` (the independent reference that the
# Rust runtime is tested against).
#
# Install (CPU is enough; any Python >= 3.10):
#   python3 -m venv /tmp/refenv
#   /tmp/refenv/bin/pip install torch==2.15.0 transformers==5.24.0 \
#       safetensors==0.8.0 tokenizers==0.23.3 accelerate==1.15.0 numpy
#   (accelerate is required by transformers' BitNet quantizer. The PyPI torch
#   wheel pulls the nvidia-* CUDA wheels on Linux x86_64, ~5 GB; only the CPU
#   is used.)
# Run (from anywhere; writes next to this file; ~12 minutes on 2 cores, mostly
# the deterministic seed search):
#   /tmp/refenv/bin/python tests/reference/make_goldens.py
#
# Versions used to produce the committed files: Python 3.11.7, torch 2.15.0,
# transformers 5.24.0, tokenizers 0.23.3, safetensors 0.8.0, accelerate 1.15.0,
# numpy 2.4.6. The script records the versions it ran with in every golden file.
#
# What it does, all deterministic (fixed seeds; no network):
#   1. Trains a 624-token byte-level BPE (tokenizers library) on English text
#      written below, with the Llama-3 pre-tokenizer split regex, ignore_merges
#      like Llama-3, and 16 Llama-3 special tokens at ids 624..639; writes
#      tokenizer.json / tokenizer_config.json.
#   2. For each case, draws random ternary weights, per-tensor bf16
#      weight_scale, bf16 embeddings and norms, in the microsoft/bitnet-b1.58-2B-4T
#      layout (uint8 [M/4, K] packed weights, tied embeddings), runs an own,
#      independent forward pass to pick the first seed whose greedy choices are
#      decisive at every checked position and stable under simulated rounding
#      noise (see README), writes config.json + model.safetensors,
#      loads the checkpoint with transformers (CPU, float32, eager attention,
#      torch.compile disabled) and writes golden.json from transformers' outputs,
#      cross-checked against the independent forward pass.
#   3. Writes tokenizer_goldens.json (>= 1000 strings).
import os

os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")  # eager semantics of the @torch.compile'd BitNet ops
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import hashlib
import json
import platform
import random
import shutil
import sys
import unicodedata
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

HERE = Path(__file__).resolve().parent
GOLDENS = HERE / "goldens"

# ----------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
N_REGULAR = 624  # 256 byte tokens + 368 merges
# Llama-3.0 naming and order of its first special tokens (ids 128000.. there).
SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|reserved_special_token_2|>",
    "<|reserved_special_token_3|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|reserved_special_token_4|>",
    "<|eot_id|>",
    "<|reserved_special_token_5|>",
    "<|reserved_special_token_6|>",
    "<|reserved_special_token_7|>",
    "<|reserved_special_token_8|>",
    "<|reserved_special_token_9|>",
    "<|reserved_special_token_10|>",
]
VOCAB_SIZE = N_REGULAR + len(SPECIALS)  # 640
BOS_ID = N_REGULAR + 0
EOS_ID = N_REGULAR + 1
EOT_ID = N_REGULAR + 9

# 2B4T-style chat format: BOS, "Role: content<|eot_id|>" per message, then
# "Assistant: " when a generation prompt is wanted.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}Assistant: {% endif %}"
)

CORPUS_TEXT = """\
The small runtime reads a model file, maps its tensors and answers a prompt one token at a time.
Every weight in a ternary layer is minus one, zero or plus one, and a single scale brings the sum back.
It's a quiet morning; the river runs past the mill, and they're walking along the old stone wall.
I'm sure we'll be there by noon, but you'd better bring a coat because the wind has turned cold.
She said: "Don't worry, I've checked the numbers twice." He answered, "Then we're ready to go!"
In 1969, 600 million people watched the landing; in 2025 the same broadcast fits on a phone.
Prices rose by 3.5% in March, 4.25% in April and 12% over the year, which is 1,234 dollars per family.
The function returns None when the list is empty, otherwise it returns the largest element.
def add(a, b):
    return a + b

for i in range(10):
    print(i * i)

if (x > 0 && y < 100) { return x; } else { return -1; }
Questions? Answers! Lists: apples, pears, plums; also cherries... and more - much more.
A language model predicts the next word from the words before it, and it does so again and again.
Attention lets each position look back at earlier positions; the keys and values are kept in a cache.
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.
Once upon a time there was a little house at the edge of a forest, and in it lived a family of three.
They would walk to the village every Saturday, buy bread and cheese, and talk with their neighbours.
Numbers like 7, 42, 128, 256, 1024, 4096 and 65536 appear often in computing.
The year 1999 ended, 2000 began, and nothing broke; engineers had fixed the dates long before.
Water boils at 100 degrees Celsius and freezes at 0; the human body is about 37 degrees.
What is the capital of France? Paris is the capital of France, and Berlin is the capital of Germany.
Please write a short poem about the sea, the sky and the light of the evening sun.
The train leaves at 9:45 from platform 3 and arrives at 13:20, after stopping in four towns.
Read the file, check the header, then parse each record; stop at the first error and report it.
We tested the program on many inputs: empty strings, long strings, strings with tabs and newlines.
Good software is simple, clear and correct; it is tested, documented and kept small.
The weather today is sunny with a light breeze, and tomorrow it will rain in the afternoon.
User: Hello, who are you?
Assistant: I am a small assistant. How can I help you today?
User: Tell me a fact about the moon.
Assistant: The moon is about 384,400 kilometres from the Earth and takes 27 days to orbit it.
"""

WORDS = (
    "the of and to in is it that was for on are with as his they be at one have this from or had by "
    "word but what some we can out other were all there when up use your how said an each she which do "
    "their time if will way about many then them write would like so these her long make thing see him "
    "two has look more day could go come did number sound no most people my over know water than call "
    "first who may down side been now find any new work part take get place made live where after back "
    "little only round man year came show every good me give our under name very through just form "
    "sentence great think say help low line differ turn cause much mean before move right boy old too "
    "same tell does set three want air well also play small end put home read hand port large spell add "
    "even land here must big high such follow act why ask men change went light kind off need house "
    "picture try us again animal point mother world near build self earth father head stand own page "
    "should country found answer school grow study still learn plant cover food sun four between state "
    "keep eye never last let thought city tree cross farm hard start might story saw far sea draw left "
    "late run while press close night real life few north open seem together next white children begin "
    "got walk example ease paper group always music those both mark often letter until mile river car "
    "feet care second book carry took science eat room friend began idea fish mountain stop once base "
    "hear horse cut sure watch color face wood main enough plain girl usual young ready above ever red "
    "list though feel talk bird soon body dog family direct pose leave song measure door product black "
    "short numeral class wind question happen complete ship area half rock order fire south problem "
    "piece told knew pass since top whole king space heard best hour better true during hundred five "
    "remember step early hold west ground interest reach fast verb sing listen six table travel less "
    "morning ten simple several vowel toward war lay against pattern slow center love person money "
    "serve appear road map rain rule govern pull cold notice voice unit power town fine certain fly "
    "fall lead cry dark machine note wait plan figure star box noun field rest correct able pound done "
    "beauty drive stood contain front teach week final gave green oh quick develop ocean warm free "
    "minute strong special mind behind clear tail produce fact street inch multiply nothing course stay "
    "wheel full force blue object decide surface deep moon island foot system busy test record boat "
    "common gold possible plane stead dry wonder laugh thousand ago ran check game shape equate hot miss "
    "brought heat snow tire bring yes distant fill east paint language among model token weight scale"
).split()


def training_lines():
    lines = CORPUS_TEXT.splitlines(keepends=True)
    rng = random.Random(1234)
    for _ in range(1500):
        n = rng.randint(4, 14)
        ws = [rng.choice(WORDS) for _ in range(n)]
        if rng.random() < 0.5:
            ws[0] = ws[0].capitalize()
        s = " ".join(ws)
        r = rng.random()
        if r < 0.2:
            s += f" {rng.randint(0, 10 ** rng.randint(1, 6))}"
        elif r < 0.3:
            s += rng.choice([" I'm", " they'll", " it's", " we've", " you'd", " don't"])
        s += rng.choice([".", ".", ".", "?", "!", ",", ";", ":"]) + rng.choice([" ", "\n", "\n"])
        lines.append(s)
    return lines


def bytes_to_unicode():
    """The GPT-2 byte -> printable character map used by ByteLevel (own implementation)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    out = {}
    extra = 0
    for b in range(256):
        if b in printable:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def build_tokenizer():
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    def pre():
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
            ]
        )

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre()
    trainer = trainers.BpeTrainer(
        vocab_size=N_REGULAR,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(training_lines(), trainer=trainer)
    trained = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    # Canonical ids, independent of the trainer's hash-map order: the 256 byte
    # symbols in byte order, then each merge's result in merge order.
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    for a, b in merges:
        assert a in vocab and b in vocab, (a, b)
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
    assert set(vocab) == set(trained["vocab"]), "trainer vocab is not bytes + merges"
    assert len(vocab) == N_REGULAR, len(vocab)

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False, byte_fallback=False, ignore_merges=True))
    tok.normalizer = None
    tok.pre_tokenizer = pre()
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False, lstrip=False, rstrip=False, single_word=False) for s in SPECIALS])
    assert tok.token_to_id(SPECIALS[0]) == BOS_ID and tok.get_vocab_size(with_added_tokens=True) == VOCAB_SIZE
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="<|begin_of_text|> $A:0",
                pair="<|begin_of_text|> $A:0 <|begin_of_text|>:1 $B:1",
                special_tokens=[("<|begin_of_text|>", BOS_ID)],
            ),
        ]
    )
    return tok


def write_tokenizer_files(tok, d: Path):
    d.mkdir(parents=True, exist_ok=True)
    tok.save(str(d / "tokenizer.json"), pretty=False)
    added = {
        str(N_REGULAR + i): {
            "content": s, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True,
        }
        for i, s in enumerate(SPECIALS)
    }
    cfg = {
        "added_tokens_decoder": added,
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 256,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (d / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------

CASES = [
    # name, hidden, ffn, layers, heads, kv heads, rope_theta, base seed
    # qk: output std of q_proj and k_proj, so attention scores have std ~ qk^2
    # (sharper attention makes greedy choices more fragile, see README)
    dict(name="tiny_a", hidden=256, ffn=512, layers=2, heads=4, kv=2, theta=500000.0, seed=1000, qk=0.8),
    dict(name="tiny_b", hidden=256, ffn=768, layers=3, heads=8, kv=2, theta=10000.0, seed=2000, qk=0.35),
    dict(name="tiny_c", hidden=512, ffn=1024, layers=2, heads=4, kv=1, theta=500000.0, seed=3000, qk=0.5),
]
RMS_EPS = 1e-5
MAX_POS = 256
N_NEW = 16
MAX_TRIES = 3000
MARGIN = 0.5          # required top1 - top2 logit gap (absolute), transformers' logits
SEARCH_MARGIN = 0.55  # stricter gap asked of the own forward pass while searching seeds
TARGET_LOGIT_STD = 100.0
JITTER_REL = 1e-6     # relative noise on quantizer inputs in the robustness runs
ROBUST_RUNS = 8

PROMPTS = [
    ("short", "Hello world"),
    ("digits", "Pi is 3.14, not 22/7 (or 1,000); ok?!"),
    ("long", "Once upon a time, in a small village by the sea, there lived an old fisherman and his dog."),
    ("one_token", "and"),
    ("bos_only", ""),
]

PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# wanted output std of each BitLinear (inputs are ~unit RMS after the norms)
PROJ_STD = dict(v_proj=1.0, o_proj=1.5, gate_proj=0.8, up_proj=1.0, down_proj=1.5)  # q, k: per case
# Embeddings are small next to the layers' outputs, so the tied LM head does not
# simply favour the current token (x . E_x would dominate otherwise).
EMB_STD = 0.1


def bf16(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(torch.bfloat16)


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


def unpack_ternary(p: np.ndarray) -> np.ndarray:
    r, k = p.shape
    return np.concatenate([((p >> (2 * j)) & 3).astype(np.int8) - 1 for j in range(4)], axis=0)


def draw_weights(case, seed):
    rng = np.random.default_rng(seed)
    H, F, L, nh, nkv = case["hidden"], case["ffn"], case["layers"], case["heads"], case["kv"]
    hd = H // nh
    shapes = dict(
        q_proj=(nh * hd, H), k_proj=(nkv * hd, H), v_proj=(nkv * hd, H), o_proj=(H, nh * hd),
        gate_proj=(F, H), up_proj=(F, H), down_proj=(H, F),
    )
    w = {}  # name -> (bf16 tensor) or (int8 ternary, bf16 scale)
    w["model.embed_tokens.weight"] = bf16(rng.standard_normal((VOCAB_SIZE, H)) * EMB_STD)
    for l in range(L):
        p = f"model.layers.{l}."
        w[p + "input_layernorm.weight"] = bf16(rng.uniform(0.8, 1.2, H))
        w[p + "post_attention_layernorm.weight"] = bf16(rng.uniform(0.8, 1.2, H))
        w[p + "self_attn.attn_sub_norm.weight"] = bf16(rng.uniform(0.8, 1.2, H))
        w[p + "mlp.ffn_sub_norm.weight"] = bf16(rng.uniform(0.8, 1.2, F))
        for name in PROJ:
            m, k = shapes[name]
            t = rng.integers(-1, 2, size=(m, k), dtype=np.int8)
            scale = PROJ_STD.get(name, case["qk"]) / np.sqrt(2.0 * k / 3.0) * rng.uniform(0.8, 1.25)
            mod = "self_attn." if name in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp."
            w[p + mod + name] = (t, bf16(np.array([scale])))
    untie_layer0(w["model.embed_tokens.weight"], w["model.layers.0.input_layernorm.weight"])
    g = TARGET_LOGIT_STD / (np.sqrt(H) * EMB_STD)
    w["model.norm.weight"] = bf16(rng.uniform(0.8, 1.2, H) * g)
    return w


def untie_layer0(emb: torch.Tensor, norm0: torch.Tensor, gap=1e-3):
    """Layer 0 quantizes RMSNorm(E[t]) * w, i.e. x = E[t] * w scaled by 127 / max|x|.
    E and w are bf16, so E*w has at most 16 significant bits and 127*x/max|x|
    lands exactly on k + 0.5 for ~1e-4 of the elements; such ties round by the
    float noise of each implementation. Nudge those bf16 embedding values by one
    bf16 ulp (in place) until every element is >= gap away from a half-integer."""
    bits = emb.view(torch.int16)
    w = norm0.double()
    while True:
        xw = emb.double() * w
        r = 127.0 * xw / xw.abs().amax(-1, keepdim=True)
        bad = ((r - r.floor() - 0.5).abs() < gap).nonzero().tolist()
        if not bad:
            return
        for t, i in bad:
            bits[t, i] += 1  # next bf16 value away from zero


def to_state_dict(w):
    sd = {}
    for name, v in w.items():
        if isinstance(v, tuple):
            t, s = v
            sd[name + ".weight"] = torch.from_numpy(pack_ternary(t))
            sd[name + ".weight_scale"] = s
        else:
            sd[name] = v
    return sd


# -- own, independent forward pass (used to search seeds and to cross-check) --

def _rms(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + RMS_EPS) * w


def _bitlinear(x, t, s, jitter=None):
    if jitter is not None:  # simulate another implementation's rounding noise
        x = x * (1.0 + JITTER_REL * torch.randn(x.shape, generator=jitter))
    # per-token absmax int8: q = clamp(round_half_even(x * 127/max|x|), -128, 127)
    sx = 127.0 / x.abs().amax(-1, keepdim=True).clamp(min=1e-5)
    q = torch.clamp(torch.round(x * sx), -128, 127)
    y = q.double() @ t.double().T  # exact integer sums
    return (y / sx.double() * s.double()).float()


class OwnModel:
    def __init__(self, case, w):
        self.c = case
        f = lambda v: v.float()
        self.w = {k: ((torch.from_numpy(v[0].astype(np.float32)), f(v[1])) if isinstance(v, tuple) else f(v)) for k, v in w.items()}
        hd = case["hidden"] // case["heads"]
        self.hd = hd
        self.inv = 1.0 / (case["theta"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))

    def logits(self, ids, jitter=None):
        c, w, hd = self.c, self.w, self.hd
        bl = lambda x, ts: _bitlinear(x, *ts, jitter=jitter)
        T = len(ids)
        x = w["model.embed_tokens.weight"][torch.tensor(ids)]
        ang = torch.arange(T, dtype=torch.float64)[:, None] * self.inv[None, :]  # [T, hd/2]
        cos, sin = ang.cos().float(), ang.sin().float()
        mask = torch.full((T, T), float("-inf")).triu(1)
        g = c["heads"] // c["kv"]
        for l in range(c["layers"]):
            p = f"model.layers.{l}."
            h = _rms(x, w[p + "input_layernorm.weight"])
            q = bl(h, w[p + "self_attn.q_proj"]).view(T, c["heads"], hd)
            k = bl(h, w[p + "self_attn.k_proj"]).view(T, c["kv"], hd)
            v = bl(h, w[p + "self_attn.v_proj"]).view(T, c["kv"], hd)

            def rope(z):  # NEOX: dim i pairs with dim i + hd/2
                a, b = z[..., : hd // 2], z[..., hd // 2:]
                cc, ss = cos[:, None, :], sin[:, None, :]
                return torch.cat([a * cc - b * ss, b * cc + a * ss], -1)

            q, k = rope(q), rope(k)
            outs = []
            for hh in range(c["heads"]):
                kv = hh // g
                sc = (q[:, hh] @ k[:, kv].T) / np.sqrt(hd) + mask
                outs.append(torch.softmax(sc, -1) @ v[:, kv])
            a = torch.cat(outs, -1)
            a = _rms(a, w[p + "self_attn.attn_sub_norm.weight"])
            x = x + bl(a, w[p + "self_attn.o_proj"])
            h = _rms(x, w[p + "post_attention_layernorm.weight"])
            gt = bl(h, w[p + "mlp.gate_proj"])
            up = bl(h, w[p + "mlp.up_proj"])
            m = torch.relu(gt).pow(2) * up
            m = _rms(m, w[p + "mlp.ffn_sub_norm.weight"])
            x = x + bl(m, w[p + "mlp.down_proj"])
        x = _rms(x, w["model.norm.weight"])
        return x @ w["model.embed_tokens.weight"].T  # tied LM head

    def greedy(self, ids, n):
        ids = list(ids)
        steps = []
        for _ in range(n):
            lg = self.logits(ids)
            steps.append(lg[-1])
            ids.append(int(lg[-1].argmax()))
        return ids, steps


def margins(lg: torch.Tensor) -> torch.Tensor:
    top = lg.topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


def evaluate_own(model: OwnModel, prompt_ids):
    """min margin over every prefill position and every greedy step; no special ids generated."""
    worst = float("inf")
    for ids in sorted(prompt_ids, key=len, reverse=True):
        worst = min(worst, float(margins(model.logits(ids)).min()))
        if worst < SEARCH_MARGIN:
            return worst
    for ids in prompt_ids:
        full, steps = model.greedy(ids, N_NEW)
        worst = min(worst, float(margins(torch.stack(steps)).min()))
        if worst < SEARCH_MARGIN or any(t >= N_REGULAR for t in full[len(ids):]):
            return -1.0 if worst >= SEARCH_MARGIN else worst
    return worst


def robust_own(model: OwnModel, paths, runs):
    """Teacher-forced argmax along each greedy path must not move when every
    quantizer input gets a relative jitter of JITTER_REL (several times the
    float32 rounding noise): activation-rounding flips between implementations
    then cannot change any golden argmax."""
    ref = [model.logits(p[:-1]).argmax(-1) for p in paths]
    for r in range(runs):
        g = torch.Generator().manual_seed(r)
        for p, a in zip(paths, ref):
            if not torch.equal(model.logits(p[:-1], jitter=g).argmax(-1), a):
                return r
    return runs


def config_json(case):
    return {
        "architectures": ["BitNetForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "hidden_act": "relu2",
        "hidden_size": case["hidden"],
        "initializer_range": 0.02,
        "intermediate_size": case["ffn"],
        "max_position_embeddings": MAX_POS,
        "model_type": "bitnet",
        "num_attention_heads": case["heads"],
        "num_hidden_layers": case["layers"],
        "num_key_value_heads": case["kv"],
        "quantization_config": {
            "linear_class": "autobitlinear",
            "quant_method": "bitnet",
            "quantization_mode": "offline",
        },
        "rms_norm_eps": RMS_EPS,
        "rope_theta": case["theta"],
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": VOCAB_SIZE,
    }


def f32_list(t: torch.Tensor):
    # shortest decimal that round-trips to the same float32
    return [float(str(np.float32(v))) for v in t.detach().float().numpy().tolist()]


def versions():
    import safetensors
    import tokenizers
    import transformers

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
    }
    try:
        import accelerate

        out["accelerate"] = accelerate.__version__
    except ImportError:
        pass
    return out


def load_hf(d: Path):
    from transformers import BitNetForCausalLM

    model = BitNetForCausalLM.from_pretrained(str(d), dtype=torch.float32, attn_implementation="eager", device_map="cpu")
    # transformers 5.24 routes every "*.weight" through BitNetDeserialize, which
    # keeps the checkpoint dtype (bf16) for embeddings and norms even with
    # dtype=float32, while the unpacked ternary weights are float32 (the forward
    # pass then fails on mixed dtypes). bf16 -> f32 is exact, so upcast.
    model = model.to(torch.float32)
    assert all(p.dtype == torch.float32 for p in list(model.parameters()) + list(model.buffers()))
    model.eval()
    return model


def check_hf_model(model, case, w):
    cfg = model.config
    assert cfg.rope_parameters["rope_theta"] == case["theta"], cfg.rope_parameters
    assert cfg.tie_word_embeddings
    emb = model.model.embed_tokens.weight
    assert model.lm_head.weight.data_ptr() == emb.data_ptr(), "LM head is not tied"
    from transformers.integrations.bitnet import AutoBitLinear, unpack_weights

    assert type(model.lm_head) is torch.nn.Linear and model.lm_head.bias is None  # not ternary
    lin = model.model.layers[0].self_attn.q_proj
    assert isinstance(lin, AutoBitLinear) and not lin.online_quant, type(lin)
    assert lin.weight.dtype == torch.float32
    for l in range(case["layers"]):
        for name in PROJ:
            mod = "self_attn" if name in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            m = getattr(getattr(model.model.layers[l], mod), name)
            t, s = w[f"model.layers.{l}.{mod}.{name}"]
            assert torch.equal(m.weight, torch.from_numpy(t.astype(np.float32))), f"unpack mismatch {l}.{name}"
            assert torch.equal(m.weight_scale, s.float()), f"weight_scale mismatch {l}.{name}"
            assert m.bias is None
    # transformers' own unpacker agrees with our packing order
    t, _ = w["model.layers.0.self_attn.q_proj"]
    u = unpack_weights(torch.from_numpy(pack_ternary(t)), dtype=torch.float32)
    assert torch.equal(u, torch.from_numpy(t.astype(np.float32)))


def make_case(case, tok, versions_info):
    from safetensors.torch import save_file

    d = GOLDENS / case["name"]
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    prompt_ids = [tok.encode(t, add_special_tokens=True).ids for _, t in PROMPTS]
    assert len(prompt_ids[3]) == 2 and len(prompt_ids[4]) == 1, prompt_ids

    tries = []
    for attempt in range(MAX_TRIES):
        seed = case["seed"] + attempt
        w = draw_weights(case, seed)
        own = OwnModel(case, w)
        mm = evaluate_own(own, prompt_ids)
        tries.append(round(mm, 4))
        if mm < SEARCH_MARGIN:
            continue
        paths = [own.greedy(ids, N_NEW)[0] for ids in prompt_ids]
        if robust_own(own, paths, ROBUST_RUNS) < ROBUST_RUNS:
            continue
        # candidate: write it and let transformers be the judge
        sd = to_state_dict(w)
        save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
        (d / "config.json").write_text(json.dumps(config_json(case), indent=2) + "\n")
        write_tokenizer_files(tok, d)
        model = load_hf(d)
        check_hf_model(model, case, w)
        golden = run_hf(model, case, own, prompt_ids)
        if golden["min_margin"] >= MARGIN and golden["all_argmax_agree_with_own"]:
            break
        print(f"  {case['name']} seed {seed}: rejected by transformers check", file=sys.stderr)
    else:
        raise SystemExit(f"no decisive seed found for {case['name']}")

    H, nh = case["hidden"], case["heads"]
    out = {
        "case": case["name"],
        "generated_by": "tests/reference/make_goldens.py",
        "versions": versions_info,
        "seed": seed,
        "seeds_tried": attempt + 1,
        "robustness": {
            "jitter_rel": JITTER_REL, "runs_passed": ROBUST_RUNS,
            "meaning": "an independent exact-integer forward pass, with every BitLinear input multiplied by "
                       "(1 + jitter_rel * N(0,1)) in each of runs_passed runs, gives the same argmax at every "
                       "prefill position and greedy step",
        },
        "qk_std": case["qk"],
        "reference": "transformers BitNetForCausalLM, CPU, float32, attn_implementation=eager, TORCH_COMPILE_DISABLE=1",
        "config": {
            "hidden_size": H, "intermediate_size": case["ffn"], "num_hidden_layers": case["layers"],
            "num_attention_heads": nh, "num_key_value_heads": case["kv"], "head_dim": H // nh,
            "vocab_size": VOCAB_SIZE, "rope_theta": case["theta"], "rms_norm_eps": RMS_EPS,
            "max_position_embeddings": MAX_POS, "hidden_act": "relu2", "tie_word_embeddings": True,
            "bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "eot_token_id": EOT_ID,
            "weights_dtype": "uint8 packed [M/4, K], weight_scale bf16 [1], embeddings and norms bf16",
        },
        "model_sha256": hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest(),
        **{k: v for k, v in golden.items() if k != "all_argmax_agree_with_own"},
    }
    (d / "golden.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    return out


@torch.no_grad()
def run_hf(model, case, own, prompt_ids):
    from transformers import GenerationConfig

    gc = GenerationConfig(
        do_sample=False, num_beams=1, max_new_tokens=N_NEW, min_new_tokens=0, use_cache=True,
        eos_token_id=None, bos_token_id=BOS_ID, pad_token_id=EOS_ID,
        return_dict_in_generate=True, output_logits=True,
    )
    prompts = []
    worst = float("inf")
    worst_own_diff = 0.0
    agree = True
    logit_std = []
    for (label, text), ids in zip(PROMPTS, prompt_ids):
        x = torch.tensor([ids])
        lg = model(input_ids=x, use_cache=False).logits[0].float()  # [T, V]
        gen = model.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=gc)
        seq = gen.sequences[0].tolist()
        new = seq[len(ids):]
        assert len(new) == N_NEW, (label, new)
        step_logits = torch.stack([s[0].float() for s in gen.logits])  # raw logits, [N_NEW, V]
        # the first step's logits are the prefill's last position
        pre_m = margins(lg)
        step_m = margins(step_logits)
        m = float(torch.cat([pre_m, step_m]).min())
        worst = min(worst, m)
        logit_std.append(float(lg[-1].std()))
        # cross-check against the own forward pass (full recompute, no cache)
        full_own = own.logits(seq[:-1])
        full_hf = model(input_ids=torch.tensor([seq[:-1]]), use_cache=False).logits[0].float()
        worst_own_diff = max(worst_own_diff, float((full_own - full_hf).abs().max()))
        own_greedy, _ = own.greedy(ids, N_NEW)
        agree &= own_greedy == seq
        agree &= torch.equal(full_own.argmax(-1), full_hf.argmax(-1))
        agree &= torch.equal(step_logits.argmax(-1), torch.tensor(new))
        prompts.append({
            "label": label,
            "text": text,
            "input_ids": ids,
            "greedy_ids": new,
            "greedy_text": _decode(new),
            "prefill_logits_argmax": lg.argmax(-1).tolist(),
            "prefill_margins": [round(float(v), 3) for v in pre_m],
            "greedy_step_margins": [round(float(v), 4) for v in step_m],
            "min_margin": round(m, 4),
            "last_logits": f32_list(lg[-1]),
        })
    return {
        "min_margin": round(worst, 4),
        "margin_rule": f"top1 - top2 logit >= {MARGIN} at every prefill position and every greedy step",
        "last_logits_std": round(float(np.mean(logit_std)), 3),
        "max_abs_logit_diff_vs_independent_impl": float(f"{worst_own_diff:.3g}"),
        "all_argmax_agree_with_own": bool(agree),
        "prompts": prompts,
    }


_TOK = None


def _decode(ids):
    return _TOK.decode(ids, skip_special_tokens=False)


# ----------------------------------------------------------------------------
# Tokenizer goldens
# ----------------------------------------------------------------------------

FIXED_STRINGS = [
    "", " ", "  ", "   ", "\t", "\n", "\r\n", "\n\n", " \n", "\n ", "\t\t\t", " \t \n ", "a", "A", "0",
    "hello", "Hello", "HELLO", " hello", "hello ", "hello world", "Hello, world!", "hello  world", "hello   world",
    "hello\tworld", "hello\nworld", "hello\n\nworld", "hello \n world", "hello\r\nworld", "  leading", "trailing  ",
    "I'm", "i'm", "I'M", "I'm here", "they'll", "They'll", "THEY'LL", "they'LL", "we've", "We'Ve", "you're",
    "YOU'RE", "it's", "IT'S", "It'S", "he'd", "HE'D", "don't", "DON'T", "can't", "won't", "shouldn't've",
    "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "''", "'", "'hello'", "\"quoted\"", "I\u2019m", "they\u2019ll",
    "rock 'n' roll", "the '90s", "o'clock", "Ma'am", "y'all'd've",
    "1", "12", "123", "1234", "12345", "123456", "1234567", "12345678", "123456789", "1234567890",
    "3.14159", "-42", "+7", "1e10", "0x1F", "1,000,000", "1 000 000", "2025-01-31", "12:30:45", "$19.99", "50%",
    "\u0661\u0662\u0663", "\u00bd", "\u2167", "\uff11\uff12\uff13", "\u0967\u0968",
    "!", "!!", "!!!", "?!", "...", "\u2026", "---", "--", "***", "###", "@@", "$$", "%%", "^^", "&&", "||", "~~",
    "()", "[]", "{}", "<>", "<<>>", ";;", "::", ".,;:!?", "!@#$%^&*()_+-=[]{}|;':\",./<>?`~",
    "def f(x):\n    return x * 2\n", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
    "fn main() { println!(\"hi\"); }", "SELECT * FROM t WHERE id = 1;", "<div class=\"x\">hi</div>",
    "x = {'a': 1, \"b\": [2, 3]}", "if a != b && c >= d || !e:", "#include <stdio.h>", "// comment", "/* block */",
    "    indented", "\tTabbed", "\n\n\n\n", "     \n     ", "a\u00a0b", "a\u3000b", "a\u2009b", "a\u200bb",
    "caf\u00e9", "cafe\u0301", "na\u00efve", "\u00fcber", "\u00c5ngstr\u00f6m", "Fran\u00e7ais", "Espa\u00f1a",
    "\u0141\u00f3d\u017a", "\u0130stanbul", "stra\u00dfe", "\u1e9e", "\u00e6\u00f8\u00e5", "\u0153uvre",
    "\u4f60\u597d", "\u4f60\u597d\uff0c\u4e16\u754c\uff01", "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8",
    "\ud55c\uad6d\uc5b4", "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
    "\u05e9\u05dc\u05d5\u05dd", "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440!",
    "\u0393\u03b5\u03b9\u03ac \u03c3\u03bf\u03c5", "\u0928\u092e\u0938\u094d\u0924\u0947",
    "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35",
    "\U0001F600", "\U0001F600\U0001F601", "\U0001F44D\U0001F3FD", "\U0001F468\u200d\U0001F469\u200d\U0001F467",
    "\U0001F1EB\U0001F1F7", "\u2764\ufe0f", "I \u2764\ufe0f NY", "\U0001F680 launch", "emoji\U0001F389end",
    "\U00010348", "\U0001D11E", "\ufeffBOM", "\u00ad", "\u200d", "\ufffd",
    "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|reserved_special_token_0|>", "<|reserved_special_token_10|>", "<|reserved_special_token_11|>",
    "Hello<|eot_id|>", "<|eot_id|>Hello", " <|eot_id|> ", "a<|begin_of_text|>b", "<|eot_id|><|eot_id|>",
    "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>", "<|begin_of_text|>User: Hi<|eot_id|>Assistant: ",
    "<|eot_id", "|eot_id|>", "< |eot_id|>", "<|EOT_ID|>", "<|eot_id|", "<<|eot_id|>>", "<|begin_of_text|><|end_of_text|>",
    "User: Hello<|eot_id|>Assistant: Hi there!<|eot_id|>",
]

SCRIPTS = [
    (0x00C0, 0x017F), (0x0370, 0x03FF), (0x0400, 0x04FF), (0x0590, 0x05FF), (0x0600, 0x06FF), (0x0900, 0x097F),
    (0x0E00, 0x0E7F), (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0x1F300, 0x1FAFF), (0x2000, 0x206F),
    (0x2190, 0x21FF), (0x0300, 0x036F), (0xFF00, 0xFFEF), (0x1D400, 0x1D7FF),
]
WS = [" ", "  ", "   ", "\t", "\n", "\r\n", "\r", "\n\n", " \n", "\t\n", "\u00a0", "\u3000", "\u2003", "\v", "\f", "    "]
CODE = [
    "x = 1", "y += 2", "return None", "print(f'{x:>8}')", "a[i][j] = b[j][i];", "let mut v = Vec::new();",
    "while (i --> 0)", "import numpy as np", "std::vector<int> v{1, 2, 3};", "console.log(`n=${n}`);",
    "if err != nil { return err }", "lambda k: k ** 2", "#[derive(Debug)]", "SELECT a, b FROM t;", "x=>x*2",
    "# TODO: fix", "    pass", "\tgoto end;", "{\"key\": [1, 2.5, null, true]}", "<a href=\"/x?y=1&z=2\">",
]
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"]


def rand_case(rng, s):
    r = rng.random()
    if r < 0.5:
        return s
    if r < 0.7:
        return s.upper()
    if r < 0.85:
        return s.capitalize()
    return "".join(ch.upper() if rng.random() < 0.5 else ch for ch in s)


def rand_unicode(rng, n):
    out = []
    for _ in range(n):
        lo, hi = rng.choice(SCRIPTS)
        cp = rng.randint(lo, hi)
        ch = chr(cp)
        if unicodedata.category(ch) in ("Cn", "Cs", "Co"):
            ch = "?"
        out.append(ch)
    return "".join(out)


def gen_strings():
    rng = random.Random(20250101)
    out = list(FIXED_STRINGS)
    kinds = ["words", "contractions", "numbers", "whitespace", "unicode", "mixed", "code", "punct", "special", "bytes"]
    while len(out) < 1200:
        k = kinds[len(out) % len(kinds)]
        if k == "words":
            s = " ".join(rand_case(rng, rng.choice(WORDS)) for _ in range(rng.randint(1, 12)))
            s += rng.choice(["", ".", "!", "?", ",", "\n"])
        elif k == "contractions":
            parts = []
            for _ in range(rng.randint(1, 5)):
                wd = rng.choice(["i", "you", "they", "we", "she", "it", "that", "there", "who", "don", "can"])
                parts.append(rand_case(rng, wd + rng.choice(CONTRACTIONS)))
            s = rng.choice([" ", "  ", ", ", "\n"]).join(parts)
        elif k == "numbers":
            n = rng.randint(1, 30)
            s = "".join(rng.choice("0123456789") for _ in range(n))
            r = rng.random()
            if r < 0.3:
                s = rng.choice(["", "-", "+", "$", "#", " "]) + s + rng.choice(["", "%", ".", ".5", " kg", "th"])
            elif r < 0.5:
                s = f"{s[: max(1, n // 2)]}{rng.choice(['.', ',', ':', '/', '-', ' '])}{s[n // 2:]}"
            elif r < 0.6:
                s = rng.choice(WORDS) + s + rng.choice(WORDS)
        elif k == "whitespace":
            s = "".join(rng.choice(WS) + (rng.choice(WORDS) if rng.random() < 0.6 else "") for _ in range(rng.randint(1, 6)))
        elif k == "unicode":
            s = rand_unicode(rng, rng.randint(1, 10))
            if rng.random() < 0.4:
                s = rng.choice(WORDS) + " " + s + rng.choice(["", " ", "!", " ok"])
        elif k == "mixed":
            pieces = [rng.choice(WORDS), rand_unicode(rng, rng.randint(1, 3)), str(rng.randint(0, 99999)),
                      rng.choice(WS), rng.choice(CONTRACTIONS), rng.choice(".,;:!?-()[]\"'")]
            rng.shuffle(pieces)
            s = "".join(pieces[: rng.randint(2, len(pieces))])
        elif k == "code":
            s = rng.choice(["\n", "\n    ", "\n\t", " ", "\r\n"]).join(rng.choice(CODE) for _ in range(rng.randint(1, 3)))
        elif k == "punct":
            s = "".join(rng.choice("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~\u2026\u00bf\u00a1\u2014\u00ab\u00bb")
                        for _ in range(rng.randint(1, 12)))
            if rng.random() < 0.5:
                s = rng.choice(WORDS) + s + rng.choice(["", " ", "\n"]) + rng.choice(WORDS)
        elif k == "special":
            sp = rng.choice(SPECIALS + ["<|eot_id", "<|EOT_ID|>", "<|reserved_special_token_99|>"])
            s = rng.choice(["", " ", "Hi", "a b ", "\n", "x"]) + sp + rng.choice(["", " ", "there", "\n\n", sp])
        else:  # arbitrary codepoints, including controls and rare planes
            s = "".join(chr(rng.choice([rng.randint(0, 0x7F), rng.randint(0x80, 0x7FF), rng.randint(0x800, 0xD7FF),
                                        rng.randint(0xE000, 0xFFFD), rng.randint(0x10000, 0x10FFFF)]))
                        for _ in range(rng.randint(1, 8)))
        out.append(s)
    return out


def make_tokenizer_goldens(tok, versions_info):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(GOLDENS / "tokenizer.json"))  # what the Rust side will read
    entries = []
    n_rt = 0
    for i, s in enumerate(gen_strings()):
        ids = tok.encode(s, add_special_tokens=False).ids
        dec = tok.decode(ids, skip_special_tokens=False)
        e = {"text": s, "ids": ids, "decoded": dec, "roundtrip": dec == s}
        n_rt += dec == s
        if i % 4 == 0:
            e["ids_add_special"] = tok.encode(s, add_special_tokens=True).ids
        entries.append(e)
    # transformers' tokenizer wrapper gives the same ids as the raw tokenizers library
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(GOLDENS / "tiny_a"))
    for e in entries[:400]:
        assert hf(e["text"], add_special_tokens=False)["input_ids"] == e["ids"], e["text"]
        if "ids_add_special" in e:
            assert hf(e["text"])["input_ids"] == e["ids_add_special"], e["text"]
    chat = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi!"}]
    chat_text = hf.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    chat_ids = tok.encode(chat_text, add_special_tokens=False).ids
    doc = {
        "generated_by": "tests/reference/make_goldens.py",
        "versions": versions_info,
        "tokenizer": "goldens/tokenizer.json (same file in each goldens/tiny_*/)",
        "notes": [
            "ids: encode(text, add_special_tokens=False); special-token texts inside the input are still matched as specials.",
            "ids_add_special (every 4th entry): encode(text, add_special_tokens=True) = <|begin_of_text|> + ids.",
            "decoded: decode(ids, skip_special_tokens=False); roundtrip: decoded == text.",
        ],
        "special_tokens": {s: N_REGULAR + i for i, s in enumerate(SPECIALS)},
        "chat_example": {"messages": chat, "add_generation_prompt": True, "text": chat_text, "ids": chat_ids},
        "count": len(entries),
        "roundtrip_count": n_rt,
        "entries": entries,
    }
    (HERE / "tokenizer_goldens.json").write_text(json.dumps(doc, ensure_ascii=False, indent=0) + "\n")
    return len(entries), n_rt


def main():
    global _TOK
    vinfo = versions()
    GOLDENS.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    write_tokenizer_files(tok, GOLDENS)
    from tokenizers import Tokenizer

    _TOK = Tokenizer.from_file(str(GOLDENS / "tokenizer.json"))
    summary = []
    for case in CASES:
        g = make_case(case, _TOK, vinfo)
        summary.append((case["name"], g["seed"], g["seeds_tried"], g["min_margin"], g["max_abs_logit_diff_vs_independent_impl"]))
        print(f"{case['name']}: seed {g['seed']} (tried {g['seeds_tried']}), min margin {g['min_margin']}, "
              f"logit std {g['last_logits_std']}, max |hf - own| {g['max_abs_logit_diff_vs_independent_impl']}")
    n, n_rt = make_tokenizer_goldens(_TOK, vinfo)
    print(f"tokenizer goldens: {n} strings, {n_rt} round-trip")
    print("versions:", json.dumps(vinfo))


if __name__ == "__main__":
    main()
