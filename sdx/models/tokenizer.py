"""A CLIP-compatible byte-level BPE tokenizer trained locally (no download), for CLIP models built from scratch."""

from __future__ import annotations

from typing import Iterable

CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"

_CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def _train_bpe(word_counts: dict[str, int], vocab_size: int, min_frequency: int, base: list[str]
               ) -> tuple[list[str], list[tuple[str, str]]]:
    """Deterministic BPE over pre-tokenised words (CLIP style: the last symbol of a word carries "</w>").

    Repeatedly merges the most frequent adjacent pair (ties: the lexicographically smallest pair) until the
    vocabulary reaches `vocab_size` or no pair occurs `min_frequency` times. Returns (new tokens, merges)."""
    import heapq
    from collections import defaultdict

    words = []
    for word in sorted(word_counts):
        syms = list(word)
        syms[-1] += "</w>"
        words.append([syms, word_counts[word]])
    pair_counts: dict[tuple[str, str], int] = defaultdict(int)
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    for wi, (syms, c) in enumerate(words):
        for pair in zip(syms, syms[1:]):
            pair_counts[pair] += c
            where[pair].add(wi)
    heap = [(-c, pair) for pair, c in pair_counts.items()]
    heapq.heapify(heap)
    known = set(base)
    tokens: list[str] = []
    merges: list[tuple[str, str]] = []
    while heap and len(base) + len(tokens) < vocab_size:
        neg, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg:
            continue                                   # stale heap entry
        if -neg < min_frequency:
            break
        merged = pair[0] + pair[1]
        merges.append(pair)
        if merged not in known:
            known.add(merged)
            tokens.append(merged)
        touched: set[tuple[str, str]] = set()
        for wi in sorted(where.pop(pair, ())):
            syms, c = words[wi]
            for old in zip(syms, syms[1:]):
                pair_counts[old] -= c
                touched.add(old)
                where[old].discard(wi)
            out, k = [], 0
            while k < len(syms):
                if k + 1 < len(syms) and (syms[k], syms[k + 1]) == pair:
                    out.append(merged)
                    k += 2
                else:
                    out.append(syms[k])
                    k += 1
            words[wi][0] = out
            for new in zip(out, out[1:]):
                pair_counts[new] += c
                touched.add(new)
                where[new].add(wi)
        pair_counts.pop(pair, None)
        for t in touched:
            c = pair_counts.get(t, 0)
            if c > 0:
                heapq.heappush(heap, (-c, t))
            else:
                pair_counts.pop(t, None)
    return tokens, merges


def build_clip_tokenizer(texts: Iterable[str], vocab_size: int = 2000, min_frequency: int = 1):
    """Train a CLIP-compatible byte-level BPE on `texts` and wrap it as a transformers CLIPTokenizer.

    CLIP's own normaliser (NFC, whitespace, lower case) and pre-tokeniser (CLIP's split regex, byte-level
    mapping) cut the texts into words; a deterministic BPE (:func:`_train_bpe`) learns the merges, so the same
    texts always give the same tokenizer (the `tokenizers` trainer breaks ties in hash order). Vocabulary:
    <|startoftext|> 0, <|endoftext|> 1, the 256 byte symbols with and without "</w>", then the merged tokens."""
    from collections import Counter

    from tokenizers import Regex, normalizers, pre_tokenizers
    from transformers import CLIPTokenizer

    texts = [str(t) for t in texts if t is not None and str(t).strip()]
    if not texts:
        raise ValueError("build_clip_tokenizer needs at least one non-empty text")
    normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    counts: Counter = Counter()
    for text, n in Counter(texts).items():            # class-level texts repeat: split each distinct text once
        for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)):
            counts[w] += n
    counts.pop(CLIP_BOS, None)
    counts.pop(CLIP_EOS, None)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    base = [CLIP_BOS, CLIP_EOS] + alphabet + [ch + "</w>" for ch in alphabet]
    tokens, merges = _train_bpe(dict(counts), vocab_size, min_frequency, base)
    vocab = {tok: i for i, tok in enumerate(base + tokens)}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    assert tokenizer.bos_token_id == 0 and tokenizer.eos_token_id == 1, "special token ids moved"
    return tokenizer
