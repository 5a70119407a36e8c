#!/usr/bin/env python3
# make_spm_goldens.py: a small SentencePiece BPE model and golden encodings
# produced by Google's `sentencepiece` library (the independent reference for
# our SentencePiece tokenizer, `tokenizer.ggml.model = "llama"`).
#
# Install (any Python >= 3.10; the same venv as make_goldens.py works, since
# this script imports make_goldens.py for its corpus and test strings, which in
# turn imports torch):
#   python3 -m venv /tmp/refenv
#   /tmp/refenv/bin/pip install sentencepiece==0.2.3   # plus make_goldens.py's list
# Run (from anywhere; writes next to this file; a few seconds):
#   /tmp/refenv/bin/python tests/reference/make_spm_goldens.py
#
# Versions used to produce the committed spm_goldens.json: Python 3.11.7,
# sentencepiece 0.2.3 (recorded in the file).
#
# What it does, deterministically (single-threaded trainer, no input sampling
# or shuffling, fixed string generator seeds; running it twice gives the same
# bytes):
#   1. Trains a 1,000-piece SentencePiece BPE model (model_type=bpe,
#      byte_fallback, identity normalization, dummy prefix, extra whitespace
#      kept, digits split, whitespace-only pieces allowed) on make_goldens.py's
#      English corpus plus a few lines of code, accents, CJK and emoji below.
#      Like LLaMA's: <unk> = 0 (unknown), <s> = 1 (control, BOS), </s> = 2
#      (control, EOS), then the 256 byte pieces <0x00>..<0xFF>, then the merged
#      and single-character pieces.
#   2. Writes spm_goldens.json: the vocabulary as GGUF metadata holds it
#      (pieces, scores, token types mapped to GGUF's: normal 1, unknown 2,
#      control 3, user-defined 4, unused 5, byte 6), the special ids, and for
#      every test string sentencepiece's encode(text, out_type=int) ids (no BOS)
#      and decode(ids).
#
# Strings that contain the literal control texts <s>, </s> or <unk> are left
# out: our tokenizer (like llama.cpp) turns control-token texts found in the
# input into their ids, while sentencepiece treats them as plain text.
import io
import json
import platform
import random
from pathlib import Path

import sentencepiece as spm

import make_goldens as mg

HERE = Path(__file__).resolve().parent
OUT = HERE / "spm_goldens.json"

VOCAB_SIZE = 1000
CONTROL_TEXTS = ("<s>", "</s>", "<unk>")

# Extra training text so that code indentation, tabs, accented letters, some
# CJK and an emoji become pieces (everything else falls back to bytes).
EXTRA_CORPUS = """\
def area(width, height):
    return width * height
class Stack:
    def __init__(self):
        self.items = []
    def push(self, item):
        self.items.append(item)
for (int i = 0; i < n; ++i) {
\tsum += a[i];
\t\tcount++;
}
if x == 0:
        print("zero")
    else:
        print("other")
Le café est très bon, et la crème brûlée aussi. Où est la gare?
Über den Wolken muss die Freiheit wohl grenzenlos sein, sagte er.
你好，世界。我们今天学习语言模型。
日本語のテキストを読みます。
Good job 👍 see you soon 🙂 bye 👍
Price:  100  dollars,   200   euros,    300    pounds.
"""


def training_sentences():
    lines = [ln.rstrip("\n") for ln in mg.training_lines()]
    lines += EXTRA_CORPUS.splitlines()
    return [ln for ln in lines if ln.strip()]


def train():
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_sentences()),
        model_writer=model,
        model_type="bpe",
        vocab_size=VOCAB_SIZE,
        byte_fallback=True,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        num_threads=1,
        shuffle_input_sentence=False,
        input_sentence_size=0,
        seed_sentencepiece_size=1000000,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        unk_piece="<unk>",
        bos_piece="<s>",
        eos_piece="</s>",
        minloglevel=2,
    )
    return model.getvalue()


def gguf_type(sp, i):
    if sp.is_unknown(i):
        return 2
    if sp.is_control(i):
        return 3
    if sp.is_unused(i):
        return 5
    if sp.is_byte(i):
        return 6
    return 1  # normal (this model has no user-defined pieces)


def extra_strings():
    """Strings aimed at SentencePiece: space runs (the dummy prefix and '▁'
    merging), tabs and newlines (byte fallback for '\\n'), digits, the '▁'
    character itself, characters outside the vocabulary, long inputs."""
    rng = random.Random(777)
    fixed = [
        "", " ", "  ", "   ", "    ", " " * 17, " " * 64, "\t", "\n", "\n\n", "\r\n", " \n ", "\t \t",
        "a", " a", "a ", "  a", "a  ", " a ", "a b", "a  b", "a   b", "a    b", "a\tb", "a\nb", "a \n b",
        "hello world", " hello world ", "Hello, World!", "  leading two", "trailing two  ",
        "    def f(x):\n        return x\n", "\tindented\n\t\tdouble",
        "\u2581", "\u2581\u2581", "a\u2581b", " \u2581 ", "\u2581hello", "hello\u2581",
        "0", "00", "007", "1234567890", "3.14159", "1,000,000", "-12 + 34 = 22",
        "caf\u00e9 cr\u00e8me br\u00fbl\u00e9e", "\u00dcber", "\u4f60\u597d\uff0c\u4e16\u754c", "\u4f60\u597d\u5417",
        "\U0001F44D\U0001F642", "\U0001F44D\U0001F3FD", "\U0001F468\u200d\U0001F469\u200d\U0001F467",
        "\u00ff\u0100\u0800\uffff\U00010000\U0010FFFF", "\u0000", "a\u0000b", "\u007f", "\u0085", "\u00a0",
        "x\u00a0y", "\u3000", "\u200b", "\ufeff", "\ufffd", "\u2028", "<", "s>", "<s", "< s>", "<S>", "</S>",
        "<UNK>", "<0x41>", "<0x0A>", "<0xFF>", "<<>>", "</", "/s>",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "the the the the the the the the the the",
        "thethethethethethethethethethethethe",
    ]
    out = list(fixed)
    words = mg.WORDS
    for i in range(300):
        k = i % 6
        if k == 0:  # space runs between words, at the ends
            s = "".join(" " * rng.randint(0, 5) + rng.choice(words) for _ in range(rng.randint(1, 6)))
            s += " " * rng.randint(0, 4)
        elif k == 1:  # code-like indentation
            s = "\n".join(" " * rng.choice([0, 2, 4, 8]) + rng.choice(mg.CODE) for _ in range(rng.randint(1, 4)))
        elif k == 2:  # digits glued to words
            s = " ".join(rng.choice(words) + str(rng.randint(0, 10 ** rng.randint(1, 8))) for _ in range(rng.randint(1, 4)))
        elif k == 3:  # characters outside the vocabulary (byte fallback)
            s = rng.choice(words) + " " + mg.rand_unicode(rng, rng.randint(1, 6)) + rng.choice(["", " ", " end"])
        elif k == 4:  # mixed whitespace
            s = "".join(rng.choice(mg.WS + ["\u2581", "  ", "\t\t"]) + rng.choice(["", rng.choice(words)])
                        for _ in range(rng.randint(1, 8)))
        else:  # longer text
            s = " ".join(rng.choice(words) for _ in range(rng.randint(40, 120)))
            s = s.replace(" the ", rng.choice([" the ", "  the ", "\nthe "]))
        out.append(s)
    return out


def main():
    model = train()
    sp = spm.SentencePieceProcessor(model_proto=model)
    n = sp.get_piece_size()
    assert n == VOCAB_SIZE, n
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2)
    pieces = [sp.id_to_piece(i) for i in range(n)]
    assert pieces[:3] == ["<unk>", "<s>", "</s>"], pieces[:3]
    types = [gguf_type(sp, i) for i in range(n)]
    assert types[:3] == [2, 3, 3]
    assert sum(t == 6 for t in types) == 256

    seen = set()
    strings = []
    n_excluded = 0
    for s in mg.gen_strings() + extra_strings():
        if s in seen:
            continue
        seen.add(s)
        if any(c in s for c in CONTROL_TEXTS):
            n_excluded += 1
            continue
        strings.append(s)

    entries = []
    n_rt = n_bytes = 0
    for s in strings:
        ids = sp.encode(s, out_type=int)
        dec = sp.decode(ids)
        n_rt += dec == s
        n_bytes += any(types[i] == 6 for i in ids)
        entries.append({"text": s, "ids": ids, "decoded": dec})

    doc = {
        "generated_by": "tests/reference/make_spm_goldens.py",
        "versions": {"python": platform.python_version(), "sentencepiece": spm.__version__},
        "notes": [
            "ids: SentencePieceProcessor.encode(text, out_type=int) (no BOS); decoded: decode(ids).",
            "types are GGUF token types: normal 1, unknown 2, control 3, user-defined 4, unused 5, byte 6.",
            "Strings containing <s>, </s> or <unk> are excluded: llama.cpp-style tokenizers turn those texts "
            "into control ids, sentencepiece does not.",
            "Trainer: model_type=bpe, byte_fallback, identity normalization, add_dummy_prefix, "
            "remove_extra_whitespaces=False, split_digits, allow_whitespace_only_pieces.",
        ],
        "add_space_prefix": True,
        "bos_id": sp.bos_id(),
        "eos_id": sp.eos_id(),
        "unk_id": sp.unk_id(),
        "pieces": pieces,
        "scores": [sp.get_score(i) for i in range(n)],
        "types": types,
        "count": len(entries),
        "roundtrip_count": n_rt,
        "byte_fallback_count": n_bytes,
        "excluded_control_text_count": n_excluded,
        "entries": entries,
    }
    text = json.dumps(doc, ensure_ascii=False, indent=0, separators=(",", ":")) + "\n"
    OUT.write_text(text, encoding="utf-8")
    print(f"{len(entries)} strings ({n_rt} round-trip, {n_bytes} use byte fallback, "
          f"{n_excluded} excluded), {len(text.encode())} bytes -> {OUT}")


if __name__ == "__main__":
    main()
