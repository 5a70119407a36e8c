#!/usr/bin/env python3
"""make_corpus.py: build the training corpus of models/tiny-bitnet-trained-i2s.gguf
from freely licensed English text shipped in Debian packages.

Install the sources (Debian 12 "bookworm"; versions used for the bundled model):
    apt-get install -y --no-install-recommends \
        wordnet-base=1:3.0-37 bible-kjv=4.38 bible-kjv-text=4.38 dict-devil=1.0-13.1
Run:
    python3 tools/make_corpus.py --out /work/corpus
Writes <out>/corpus.jsonl (one JSON document per line: {"src": ..., "text": ...})
and <out>/sources.json (packages, versions, sizes). Deterministic: the same
packages give byte-identical output.

Sources and licences (all allow redistribution of derived works such as a model):
  * wordnet-base (WordNet 3.0, Princeton University): glosses and example
    sentences of every synset. WordNet 3.0 licence (permissive, BSD-like:
    "Permission to use, copy, modify and distribute ... for any purpose and
    without fee", the copyright notice must be kept).
  * bible-kjv-text (King James Version, 1611): public domain (copyright
    expired); read with the `bible` program from bible-kjv (GPL-2+, the program
    only, not shipped).
  * dict-devil (Ambrose Bierce, The Devil's Dictionary, 1881-1906): public
    domain (copyright expired).
"""
import argparse
import gzip
import json
import re
import subprocess
from pathlib import Path

WN = Path("/usr/share/wordnet")
DEVIL = Path("/usr/share/dictd/devil.dict.dz")


def pkg_version(name):
    try:
        return subprocess.run(["dpkg-query", "-W", "-f=${Version}", name], capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:
        return None


def sentence(s):
    s = s.strip().strip('"').strip()
    if not s:
        return ""
    s = s[0].upper() + s[1:]
    if s[-1] not in ".!?":
        s += "."
    return s


def wordnet_docs():
    """One line per synset: 'word, other word: gloss.' followed by its example
    sentences; synsets grouped by file in blocks of 16 lines per document."""
    docs = []
    for pos in ["noun", "verb", "adj", "adv"]:
        lines = []
        for raw in (WN / f"data.{pos}").read_text(encoding="latin-1").splitlines():
            if raw.startswith("  ") or "|" not in raw:
                continue  # licence header
            head, gloss = raw.split("|", 1)
            f = head.split()
            n = int(f[3], 16)
            words = []
            for i in range(n):
                w = f[4 + 2 * i].replace("_", " ")
                w = re.sub(r"\((a|p|ip)\)$", "", w)
                if w not in words:
                    words.append(w)
            parts = [p.strip() for p in gloss.strip().split(";")]
            defs = [p for p in parts if p and not p.startswith('"')]
            exs = [sentence(p) for p in parts if p.startswith('"')]
            line = ", ".join(words[:3]) + ": " + "; ".join(defs).rstrip(".") + "."
            lines.append(" ".join([line] + [e for e in exs if e]))
        for i in range(0, len(lines), 16):
            docs.append({"src": f"wordnet-{pos}", "text": "\n".join(lines[i:i + 16])})
    return docs


def kjv_docs():
    """One document per chapter: the title line, then the verses as one paragraph."""
    out = subprocess.run(["bible", "-l0", "gen1:1-rev22:21"], capture_output=True, text=True, check=True).stdout
    docs, title, verses = [], None, []

    def flush():
        if title and verses:
            docs.append({"src": "kjv", "text": title + "\n" + " ".join(verses)})

    for line in out.splitlines():
        if not line.strip():
            continue
        m = re.match(r"^\s+\d+ (.*)$", line)
        if m:
            verses.append(m.group(1).strip())
        else:
            flush()
            title, verses = line.strip(), []
    flush()
    return docs


def devil_docs():
    """One document per dictionary entry (text after the preface)."""
    text = gzip.open(DEVIL, "rt", encoding="latin-1").read()
    # dictfmt layout: entries start with the headword in capitals at column 0
    body = text[text.find("\nA, n."):] if "\nA, n." in text else text
    docs, cur = [], []
    for line in body.splitlines():
        if re.match(r"^[A-Z][A-Z' -]+, [a-z.]+", line) and cur:
            docs.append(cur)
            cur = []
        cur.append(line.rstrip())
    if cur:
        docs.append(cur)
    res = []
    for d in docs:
        paras = re.split(r"\n\s*\n", "\n".join(d).strip())
        t = "\n".join(re.sub(r"\s+", " ", p).strip() for p in paras if p.strip())
        t = t.replace("_", "")
        if len(t) > 20:
            res.append({"src": "devil", "text": t})
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/work/corpus")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    groups = {"wordnet": wordnet_docs(), "kjv": kjv_docs(), "devil": devil_docs()}
    with open(out / "corpus.jsonl", "w", encoding="utf-8") as f:
        for g in groups.values():
            for d in g:
                f.write(json.dumps(d, ensure_ascii=False) + "\n")
    info = {
        "packages": {p: pkg_version(p) for p in ["wordnet-base", "bible-kjv", "bible-kjv-text", "dict-devil"]},
        "documents": {k: len(v) for k, v in groups.items()},
        "chars": {k: sum(len(d["text"]) for d in v) for k, v in groups.items()},
    }
    (out / "sources.json").write_text(json.dumps(info, indent=1) + "\n")
    print(json.dumps(info))


if __name__ == "__main__":
    main()
