#!/usr/bin/env python3
# make_llama_goldens.py: tiny Llama-architecture ternary checkpoints (the
# layout of HF1BitLLM/Llama3-8B-1.58 and tiiuae/Falcon3-*-1.58bit: model_type
# "llama" with a BitNet quantization_config) and golden outputs produced by
# Hugging Face transformers, for the same Rust test as make_goldens.py
# (core/tests/golden_hf.rs reads every goldens/*/golden.json).
#
# Install and run exactly as make_goldens.py says (same venv, same versions);
# this script imports it for the tokenizer, prompts, seed search and the
# transformers run:
#   /tmp/refenv/bin/python tests/reference/make_llama_goldens.py [CASE ...]
# (~5 minutes on 2 cores.)
#
# Cases (deterministic, fixed seeds):
#   tiny_llama_legacy: transformers' legacy BitLinear (linear_class absent, so
#     "bitlinear"): packed uint8 ternary weights and a weight_scale that the
#     layer DIVIDES by (out = int_sum / (input_scale * weight_scale)), as the
#     Llama3-8B-1.58 and Falcon3 checkpoints store it; untied lm_head.
#   tiny_llama_online: AutoBitLinear in "online" mode: float weights that the
#     layer ternarises on the fly with absmean (codes = round(W / mean|W|));
#     tied embeddings.
# Both: SiLU MLP, no sub-norms, rotate-half RoPE on the checkpoint's Q/K rows
# (our converter reorders them for llama.cpp's adjacent-pair RoPE).
import make_goldens as mg  # sets TORCH_COMPILE_DISABLE etc. before torch loads

import hashlib
import json
import shutil
import sys

import numpy as np
import torch

CASES = [
    dict(name="tiny_llama_legacy", mode="legacy", hidden=256, ffn=512, layers=2, heads=4, kv=2,
         theta=10000.0, seed=4000, qk=0.6, tied=False),
    dict(name="tiny_llama_online", mode="online", hidden=256, ffn=512, layers=2, heads=8, kv=4,
         theta=500000.0, seed=5000, qk=0.5, tied=True),
]
RMS_EPS = 1e-5
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")


def absmean_codes(w32: torch.Tensor):
    """transformers' WeightQuant in float32: codes and the scale to multiply by."""
    scale = 1.0 / w32.abs().mean().clamp(min=1e-5)
    codes = (w32 * scale).round().clamp(-1, 1)
    return codes.to(torch.int8).numpy(), float(1.0 / scale)


def draw_weights(case, seed):
    """name -> bf16 tensor, or for projections a dict with the stored tensors
    and the (codes, effective multiply-by scale) the layer computes with."""
    rng = np.random.default_rng(seed)
    H, F, L, nh, nkv = case["hidden"], case["ffn"], case["layers"], case["heads"], case["kv"]
    hd = H // nh
    shapes = dict(
        q_proj=(nh * hd, H), k_proj=(nkv * hd, H), v_proj=(nkv * hd, H), o_proj=(H, nh * hd),
        gate_proj=(F, H), up_proj=(F, H), down_proj=(H, F),
    )
    w = {}
    w["model.embed_tokens.weight"] = mg.bf16(rng.standard_normal((mg.VOCAB_SIZE, H)) * mg.EMB_STD)
    if not case["tied"]:
        w["lm_head.weight"] = mg.bf16(rng.standard_normal((mg.VOCAB_SIZE, H)) * mg.EMB_STD)
    for l in range(L):
        p = f"model.layers.{l}."
        w[p + "input_layernorm.weight"] = mg.bf16(rng.uniform(0.8, 1.2, H))
        w[p + "post_attention_layernorm.weight"] = mg.bf16(rng.uniform(0.8, 1.2, H))
        for name in mg.PROJ:
            m, k = shapes[name]
            std = mg.PROJ_STD.get(name, case["qk"]) / np.sqrt(2.0 * k / 3.0) * rng.uniform(0.8, 1.25)
            mod = "self_attn." if name in ATTN else "mlp."
            if case["mode"] == "legacy":
                t = rng.integers(-1, 2, size=(m, k), dtype=np.int8)
                stored = mg.bf16(np.array([1.0 / std]))  # the layer divides by it
                w[p + mod + name] = dict(codes=t, scale=1.0 / float(stored.float()[0]),
                                         tensors={"weight": torch.from_numpy(mg.pack_ternary(t)),
                                                  "weight_scale": stored})
            else:
                # Float weights whose absmean codes are about 2/3 non-zero.
                wf = mg.bf16(rng.standard_normal((m, k)) * std * 1.25)
                codes, scale = absmean_codes(wf.float())
                w[p + mod + name] = dict(codes=codes, scale=scale, tensors={"weight": wf})
    mg.untie_layer0(w["model.embed_tokens.weight"], w["model.layers.0.input_layernorm.weight"])
    g = mg.TARGET_LOGIT_STD / (np.sqrt(H) * mg.EMB_STD)
    w["model.norm.weight"] = mg.bf16(rng.uniform(0.8, 1.2, H) * g)
    return w


def to_state_dict(w):
    sd = {}
    for name, v in w.items():
        if isinstance(v, dict):
            for suffix, t in v["tensors"].items():
                sd[f"{name}.{suffix}"] = t
        else:
            sd[name] = v
    return sd


class OwnLlama(mg.OwnModel):
    """The independent forward pass of make_goldens.py, Llama flavour: SiLU,
    no sub-norms, optional untied head."""

    def __init__(self, case, w):
        plain = {}
        for k, v in w.items():
            plain[k] = (v["codes"], torch.tensor([v["scale"]], dtype=torch.float64)) if isinstance(v, dict) else v
        super().__init__(case, plain)

    def logits(self, ids, jitter=None):
        c, w, hd = self.c, self.w, self.hd
        bl = lambda x, ts: mg._bitlinear(x, *ts, jitter=jitter)
        T = len(ids)
        x = w["model.embed_tokens.weight"][torch.tensor(ids)]
        ang = torch.arange(T, dtype=torch.float64)[:, None] * self.inv[None, :]
        cos, sin = ang.cos().float(), ang.sin().float()
        mask = torch.full((T, T), float("-inf")).triu(1)
        g = c["heads"] // c["kv"]
        for l in range(c["layers"]):
            p = f"model.layers.{l}."
            h = mg._rms(x, w[p + "input_layernorm.weight"])
            q = bl(h, w[p + "self_attn.q_proj"]).view(T, c["heads"], hd)
            k = bl(h, w[p + "self_attn.k_proj"]).view(T, c["kv"], hd)
            v = bl(h, w[p + "self_attn.v_proj"]).view(T, c["kv"], hd)

            def rope(z):  # rotate-half: dim i pairs with dim i + hd/2
                a, b = z[..., : hd // 2], z[..., hd // 2:]
                cc, ss = cos[:, None, :], sin[:, None, :]
                return torch.cat([a * cc - b * ss, b * cc + a * ss], -1)

            q, k = rope(q), rope(k)
            outs = []
            for hh in range(c["heads"]):
                sc = (q[:, hh] @ k[:, hh // g].T) / np.sqrt(hd) + mask
                outs.append(torch.softmax(sc, -1) @ v[:, hh // g])
            x = x + bl(torch.cat(outs, -1), w[p + "self_attn.o_proj"])
            h = mg._rms(x, w[p + "post_attention_layernorm.weight"])
            m = torch.nn.functional.silu(bl(h, w[p + "mlp.gate_proj"])) * bl(h, w[p + "mlp.up_proj"])
            x = x + bl(m, w[p + "mlp.down_proj"])
        x = mg._rms(x, w["model.norm.weight"])
        head = w["model.embed_tokens.weight"] if c["tied"] else w["lm_head.weight"]
        return x @ head.T


def config_json(case):
    q = {"quant_method": "bitnet"}  # legacy: no linear_class, i.e. "bitlinear"
    if case["mode"] == "online":
        q.update(linear_class="autobitlinear", quantization_mode="online")
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": mg.BOS_ID,
        "eos_token_id": mg.EOS_ID,
        "head_dim": case["hidden"] // case["heads"],
        "hidden_act": "silu",
        "hidden_size": case["hidden"],
        "initializer_range": 0.02,
        "intermediate_size": case["ffn"],
        "max_position_embeddings": mg.MAX_POS,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": case["heads"],
        "num_hidden_layers": case["layers"],
        "num_key_value_heads": case["kv"],
        "quantization_config": q,
        "rms_norm_eps": RMS_EPS,
        "rope_scaling": None,
        "rope_theta": case["theta"],
        "tie_word_embeddings": case["tied"],
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": mg.VOCAB_SIZE,
    }


def load_hf(d):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(d), dtype=torch.float32, attn_implementation="eager",
                                             device_map="cpu")
    model = model.to(torch.float32)  # see make_goldens.load_hf
    model.eval()
    return model


def check_hf_model(model, case, w):
    from transformers.integrations.bitnet import AutoBitLinear, BitLinear, unpack_weights

    cfg = model.config
    assert cfg.rope_parameters["rope_theta"] == case["theta"], cfg.rope_parameters
    assert abs(cfg.rms_norm_eps - RMS_EPS) < 1e-12
    assert type(model.lm_head) is torch.nn.Linear, type(model.lm_head)
    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tied == case["tied"], (tied, case["tied"])
    for l in range(case["layers"]):
        for name in mg.PROJ:
            mod = "self_attn" if name in ATTN else "mlp"
            m = getattr(getattr(model.model.layers[l], mod), name)
            ref = w[f"model.layers.{l}.{mod}.{name}"]
            if case["mode"] == "legacy":
                assert type(m) is BitLinear, type(m)
                u = unpack_weights(m.weight, dtype=torch.float32)
                assert torch.equal(u, torch.from_numpy(ref["codes"].astype(np.float32))), f"{l}.{name}"
                assert torch.equal(m.weight_scale.float(), ref["tensors"]["weight_scale"].float())
            else:
                assert type(m) is AutoBitLinear and m.online_quant, type(m)
                assert torch.equal(m.weight, ref["tensors"]["weight"].float()), f"{l}.{name}"
            assert m.bias is None


def make_case(case, tok, versions_info):
    from safetensors.torch import save_file

    d = mg.GOLDENS / case["name"]
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    prompt_ids = [tok.encode(t, add_special_tokens=True).ids for _, t in mg.PROMPTS]
    for attempt in range(mg.MAX_TRIES):
        seed = case["seed"] + attempt
        w = draw_weights(case, seed)
        own = OwnLlama(case, w)
        if mg.evaluate_own(own, prompt_ids) < mg.SEARCH_MARGIN:
            continue
        paths = [own.greedy(ids, mg.N_NEW)[0] for ids in prompt_ids]
        if mg.robust_own(own, paths, mg.ROBUST_RUNS) < mg.ROBUST_RUNS:
            continue
        save_file(to_state_dict(w), str(d / "model.safetensors"), metadata={"format": "pt"})
        (d / "config.json").write_text(json.dumps(config_json(case), indent=2) + "\n")
        mg.write_tokenizer_files(tok, d)
        model = load_hf(d)
        check_hf_model(model, case, w)
        golden = mg.run_hf(model, case, own, prompt_ids)
        if golden["min_margin"] >= mg.MARGIN and golden["all_argmax_agree_with_own"]:
            break
        print(f"  {case['name']} seed {seed}: rejected by transformers check", file=sys.stderr)
    else:
        raise SystemExit(f"no decisive seed found for {case['name']}")

    H, nh = case["hidden"], case["heads"]
    out = {
        "case": case["name"],
        "generated_by": "tests/reference/make_llama_goldens.py",
        "versions": versions_info,
        "seed": seed,
        "seeds_tried": attempt + 1,
        "robustness": {"jitter_rel": mg.JITTER_REL, "runs_passed": mg.ROBUST_RUNS,
                       "meaning": "as in make_goldens.py"},
        "qk_std": case["qk"],
        "reference": "transformers LlamaForCausalLM with quantization_config quant_method=bitnet, CPU, float32, "
                     "attn_implementation=eager, TORCH_COMPILE_DISABLE=1",
        "config": {
            "model_type": "llama", "mode": case["mode"],
            "hidden_size": H, "intermediate_size": case["ffn"], "num_hidden_layers": case["layers"],
            "num_attention_heads": nh, "num_key_value_heads": case["kv"], "head_dim": H // nh,
            "vocab_size": mg.VOCAB_SIZE, "rope_theta": case["theta"], "rms_norm_eps": RMS_EPS,
            "max_position_embeddings": mg.MAX_POS, "hidden_act": "silu", "tie_word_embeddings": case["tied"],
            "bos_token_id": mg.BOS_ID, "eos_token_id": mg.EOS_ID, "eot_token_id": mg.EOT_ID,
            "weights_dtype": ("uint8 packed [M/4, K], weight_scale bf16 [1] (divided by)"
                              if case["mode"] == "legacy" else "bf16 float weights, ternarised online (absmean)"),
        },
        "model_sha256": hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest(),
        **{k: v for k, v in golden.items() if k != "all_argmax_agree_with_own"},
    }
    (d / "golden.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    return out


def main():
    from tokenizers import Tokenizer

    mg.RMS_EPS = RMS_EPS
    vinfo = mg.versions()
    mg._TOK = Tokenizer.from_file(str(mg.GOLDENS / "tokenizer.json"))
    wanted = sys.argv[1:] or [c["name"] for c in CASES]
    for case in (c for c in CASES if c["name"] in wanted):
        g = make_case(case, mg._TOK, vinfo)
        print(f"{case['name']}: seed {g['seed']} (tried {g['seeds_tried']}), min margin {g['min_margin']}, "
              f"max |hf - own| {g['max_abs_logit_diff_vs_independent_impl']}")


if __name__ == "__main__":
    main()
