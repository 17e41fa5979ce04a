"""Long captions end to end: the token budget and its truncation counts, Long-CLIP's position stretch, the
long_clip loss, the OpenAI-layout converter (against an independent plain-torch forward pass), and a
248-position CLIP trained and evaluated on the real fixture's T3 captions."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from sdx.data import levels as T
from sdx.models import clip as C
from sdx.models.convert import convert_clip
from sdx.train.losses import contrastive_loss, long_clip_loss, principal_reconstruction
from test_losses import free_port, gloo_rank

WORDS = ("steel surface defect scratch patch inclusion crazing pitted rolled scale bright dark spot line edge "
         "left right upper lower central region small large irregular elongated").split()


@pytest.fixture(scope="module")
def tokenizer():
    """A local CLIP BPE whose vocabulary covers WORDS (one token each after training)."""
    from sdx.models.tokenizer import build_clip_tokenizer

    return build_clip_tokenizer([" ".join(WORDS)] * 50 + ["a photo of steel surface defect: crazing."],
                                vocab_size=2000)


def _clip(tokenizer, positions: int, seed: int = 0, width: int = 32):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    cfg = CLIPConfig(text_config=dict(hidden_size=width, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=2 * width, vocab_size=len(tokenizer),
                                      max_position_embeddings=positions, eos_token_id=tokenizer.eos_token_id,
                                      bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id),
                     vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=64, image_size=32, patch_size=16),
                     projection_dim=16)
    model = CLIPModel(cfg).eval()
    with torch.no_grad():   # a trained-looking position table (random init is 0.02-scale noise)
        model.text_model.embeddings.position_embedding.weight.normal_(0, 1)
    return model


def _caption(n_words: int, seed: int = 0) -> str:
    g = torch.Generator().manual_seed(seed)
    return " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (n_words,), generator=g))


def _encode(model, tokenizer, texts, max_length=None):
    return C.encode_text_list(model, tokenizer, texts, max_length=max_length)


# -------------------------------------------------------------------------------------------------------------
# stretching
# -------------------------------------------------------------------------------------------------------------
def test_stretch_is_the_reference_formula_for_77_to_248():
    old = torch.randn(77, 5)
    new = C.stretched_positions(old, 248)
    ref = torch.empty(248, 5)
    ref[:20] = old[:20]
    for i in range(77 - 2 - 20 + 1):
        for j in range(4):
            ref[20 + 4 * i + j] = ((4 - j) * old[20 + i] + j * old[20 + i + 1]) / 4
    for j in range(4):
        ref[248 - 4 + j] = old[76] + j * (old[76] - old[75]) / 4
    assert new.shape == (248, 5) and torch.equal(new[:20], old[:20])
    assert torch.allclose(new, ref, atol=1e-6)
    with pytest.raises(ValueError, match="must exceed"):
        C.stretched_positions(old, 77)


def test_stretch_keeps_short_prompt_features_and_resizes_everything(tokenizer):
    model = _clip(tokenizer, 77)
    tokenizer.model_max_length = 77
    short = [_caption(n, seed=n) for n in (1, 5, 12, 18)]                 # 3 to 20 tokens with start and end
    assert max(C.token_lengths(tokenizer, short)) <= 20
    longer = [_caption(40, seed=7)]
    before, before_long = _encode(model, tokenizer, short), _encode(model, tokenizer, longer)
    assert C.stretch_text_positions(model, 248) == 77
    emb = model.text_model.embeddings
    assert emb.position_embedding.weight.shape[0] == 248 and emb.position_ids.shape == (1, 248)
    assert model.config.text_config.max_position_embeddings == 248
    assert C.model_lineage(model)["stretched"] == {"from": 77, "to": 248, "keep": 20, "rule": "Long-CLIP"}
    after = _encode(model, tokenizer, short, max_length=248)
    assert torch.equal(before, after)                                    # positions 0-19 untouched, causal tower
    assert not torch.allclose(before_long, _encode(model, tokenizer, longer, max_length=248), atol=1e-4)


def test_a_248_position_model_uses_tokens_past_77(tokenizer):
    model = _clip(tokenizer, 248)
    C.set_text_max_length(tokenizer, model)
    assert tokenizer.model_max_length == 248
    words = _caption(198).split()
    edited = words[:100] + ["elongated" if w != "elongated" else "irregular" for w in words[100:]]
    texts = [" ".join(words), " ".join(edited)]
    assert C.token_lengths(tokenizer, texts) == [200, 200]
    full = _encode(model, tokenizer, texts)                              # 200 tokens fit the 248 positions
    assert (full[0] - full[1]).abs().max() > 1e-3                        # tokens 101-199 change the feature
    cut = _encode(model, tokenizer, texts, max_length=77)
    assert torch.equal(cut[0], cut[1])                                   # at 77 tokens the edit is cut away


def test_load_clip_raises_the_tokenizer_to_the_models_positions(tmp_path, tokenizer):
    from transformers import CLIPProcessor

    model = _clip(tokenizer, 248)
    tokenizer.model_max_length = 77                                     # what OpenAI-style configs say
    CLIPProcessor(image_processor=C._clip_image_processor(32), tokenizer=tokenizer).save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["model_max_length"] == 77
    loaded, processor = C.load_clip(str(tmp_path))
    assert processor.tokenizer.model_max_length == 248
    enc = C.ClipEncoder.from_pretrained(str(tmp_path), device="cpu")
    assert enc.max_length == 248
    assert C.ClipEncoder.from_pretrained(str(tmp_path), device="cpu", max_length=100).tokenizer.model_max_length == 100
    with pytest.raises(ValueError, match="exceeds the model's 248 text positions"):
        C.set_text_max_length(processor.tokenizer, loaded, 300)


def test_stretched_model_is_a_plain_folder_for_stock_transformers(tmp_path, tokenizer):
    """Stock CLIPModel / AutoTokenizer / the zero-shot pipeline read the saved N-position folder and use every
    token: two labels that differ only after token 100 get different scores."""
    from PIL import Image
    from transformers import AutoTokenizer, CLIPModel, CLIPProcessor, pipeline

    model = _clip(tokenizer, 77)
    C.stretch_text_positions(model, 248)
    tokenizer.model_max_length = 248
    model.save_pretrained(tmp_path)
    CLIPProcessor(image_processor=C._clip_image_processor(32), tokenizer=tokenizer).save_pretrained(tmp_path)
    assert CLIPModel.from_pretrained(tmp_path).config.text_config.max_position_embeddings == 248
    assert AutoTokenizer.from_pretrained(tmp_path).model_max_length == 248
    words = _caption(120, seed=3).split()
    labels = [" ".join(words), " ".join(words[:110] + ["dark"] * 10)]
    clf = pipeline("zero-shot-image-classification", model=str(tmp_path), device="cpu")
    scores = {r["label"]: r["score"] for r in clf(Image.new("RGB", (40, 40), 90), candidate_labels=labels)}
    assert abs(scores[labels[0]] - scores[labels[1]]) > 1e-4


def test_kept_rows_stay_exact_under_weight_decay(tokenizer):
    model = _clip(tokenizer, 77)
    C.stretch_text_positions(model, 248)
    start = model.text_model.embeddings.position_embedding.weight.detach().clone()
    C.keep_position_rows(model)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    ids = tokenizer([_caption(60)], return_tensors="pt")["input_ids"]
    for _ in range(3):
        C.text_features(model, ids).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    C.release_position_rows(model)
    table = model.text_model.embeddings.position_embedding.weight
    assert torch.equal(table[:20], start[:20]) and not torch.allclose(table[20:62], start[20:62])
    assert list(model.state_dict()).count("text_model.embeddings.position_embedding.weight") == 1


# -------------------------------------------------------------------------------------------------------------
# truncation counts, card and report
# -------------------------------------------------------------------------------------------------------------
def test_truncation_counts_on_known_lengths_reach_card_and_report(tokenizer):
    from sdx.report.markdown import render_markdown
    from sdx.train.outputs import text_budget_section

    texts = [_caption(n, seed=n) for n in (3, 8, 10, 18)]               # 5, 10, 12 and 20 tokens
    assert C.token_lengths(tokenizer, texts) == [5, 10, 12, 20]
    counter = C.TruncationCounter(tokenizer, 10, positions=77, warning_share=0.25)
    counter.add("t3", texts + texts[:1])                                 # distinct texts count once
    counter.add("t0", texts[:2])
    summary = counter.summary()
    t3 = summary["levels"]["t3"]
    assert (t3["texts"], t3["truncated"], t3["truncated_share"]) == (4, 2, 0.5)
    assert (t3["tokens_lost_mean"], t3["tokens_lost_max"], t3["longest"], t3["warning"]) == (6.0, 10, 20, True)
    assert summary["levels"]["t0"]["truncated"] == 0 and not summary["levels"]["t0"]["warning"]
    warnings = C.truncation_warnings(summary, "m")
    assert len(warnings) == 1 and "2 of 4 texts of t3" in warnings[0]
    card = text_budget_section(summary, {"stretched": {"from": 77, "to": 248, "keep": 20}})
    assert "| t3 | 4 | 2 | 50.0 % **(above the warning share)** | 6.0 | 10 | 20 |" in card
    assert "stretched from 77 to 248" in card and "| t0 | 2 | 0 | 0.0 % | 0.0 | 0 | 10 |" in card
    report = render_markdown({"meta": {}, "text_budget": {"m": summary}})
    assert "| m | 10 / 77 | t3 | 4 | 2 | **50.0 % (above 25 %)** | 6.0 / 10 | 20 |" in report


def test_report_puts_paper_long_clip_rows_beside_long_clip_runs_only():
    from sdx.report.markdown import render_markdown

    cell = {"available": True, "acc": 90.0, "macc": 89.0, "macro_f1": 88.0}

    def row(name, level, family, arch="ViT-L/14", method="adapter"):
        return {"model": name, "train_level": level, "results": {"t0": cell},
                "setting": {"lineage": {"family": family} if family else {}, "architecture": arch,
                            "train_method": method}}

    t2 = {"test_levels": ["t0"], "candidates": ["a"], "n_test": 2324,
          "rows": [row("long-t3", "t3", "Long-CLIP"), row("long-t4", "t4", "Long-CLIP", "ViT-B/16", "full"),
                   row("plain-t3", "t3", None)]}
    report = render_markdown({"meta": {}, "task2": t2})
    section = report.split("### Long-CLIP rows")[1]
    assert "| long-t3 (T3) | 90.00 / 89.00 | 94.45 / 93.66 | none known |" in section
    assert "| long-t4 (T4) | 90.00 / 89.00 | none (the paper reports T2-T0, T3-T0) | architecture ViT-B/16" in section
    assert "plain-t3" not in section
    alone = render_markdown({"meta": {}, "task2": dict(t2, rows=[row("plain-t3", "t3", None)])})
    assert "No model here descends from a Long-CLIP checkpoint" in alone


# -------------------------------------------------------------------------------------------------------------
# the long_clip loss
# -------------------------------------------------------------------------------------------------------------
def test_principal_reconstruction_is_pca_and_identity_when_all_components_kept():
    from sklearn.decomposition import PCA

    x = torch.randn(40, 12, dtype=torch.float64)
    ref = PCA(n_components=5, svd_solver="full").fit(x.numpy())
    got = principal_reconstruction(x, 5)
    assert torch.allclose(got.double(), torch.from_numpy(ref.inverse_transform(ref.transform(x.numpy()))), atol=1e-5)
    small = torch.randn(6, 12)
    assert torch.equal(principal_reconstruction(small, 5), small)       # rank <= 5 after centring: exact
    assert not torch.allclose(principal_reconstruction(small, 4), small, atol=1e-3)   # 4 of 5 components


def test_long_clip_loss_is_the_two_terms_and_trains():
    g = torch.Generator().manual_seed(0)
    img, long_t, short_t = (torch.randn(40, 8, generator=g, requires_grad=True) for _ in range(3))
    labels = torch.arange(40) % 4
    loss = long_clip_loss(img, long_t, short_t, math.log(10.0), labels=labels, pca_dim=3)
    n = F.normalize(img, dim=-1)
    ref = (contrastive_loss(n, long_t, math.log(10.0), labels=labels)
           + contrastive_loss(principal_reconstruction(n, 3), short_t, math.log(10.0), labels=labels,
                              normalize_images=False))
    assert torch.allclose(loss, ref)
    loss.backward()
    assert all(torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0 for t in (img, long_t, short_t))


SIZES = (5, 4)


def _long_clip_batch():
    g = torch.Generator().manual_seed(5)
    n = sum(SIZES)
    return (torch.randn(n, 6, generator=g), torch.randn(n, 6, generator=g), torch.randn(n, 6, generator=g),
            torch.tensor([0, 1, 0, 2, 1, 2, 0, 1, 2]), torch.randn(6, 4, generator=g))


def _long_clip_grads(x_img, x_long, x_short, labels, w, slices, pca_dim):
    """Loss and weight gradient with the PCA done per slice (per process) and the contrastive terms global."""
    wi = w.clone().requires_grad_(True)
    img = F.normalize(x_img @ wi, dim=-1)
    rec = torch.cat([principal_reconstruction(img[s], pca_dim) for s in slices])
    loss = (contrastive_loss(img, x_long @ w, 1.0, labels=labels)
            + contrastive_loss(rec, x_short @ w, 1.0, labels=labels, normalize_images=False))
    loss.backward()
    return loss.detach(), wi.grad


def _long_clip_worker(rank, world, port, out_path):
    import torch.distributed as dist

    with gloo_rank(rank, world, port, SIZES) as sl:
        x_img, x_long, x_short, labels, w = _long_clip_batch()
        wi = w.clone().requires_grad_(True)
        loss = long_clip_loss(x_img[sl] @ wi, x_long[sl] @ w, x_short[sl] @ w, 1.0, labels=labels[sl], pca_dim=2)
        loss.backward()
        dist.all_reduce(wi.grad)
        wi.grad /= world
        if rank == 0:
            torch.save((loss.detach(), wi.grad), out_path)


@pytest.mark.slow
def test_long_clip_loss_over_two_processes(tmp_path):
    out = tmp_path / "dist.pt"
    mp.spawn(_long_clip_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    loss, grad = torch.load(out)
    slices = [slice(0, SIZES[0]), slice(SIZES[0], sum(SIZES))]
    ref_loss, ref_grad = _long_clip_grads(*_long_clip_batch(), slices, 2)
    assert torch.allclose(loss, ref_loss, atol=1e-5) and torch.allclose(grad, ref_grad, atol=1e-5)


# -------------------------------------------------------------------------------------------------------------
# the converter against an independent forward pass of the OpenAI layout
# -------------------------------------------------------------------------------------------------------------
def openai_tokenizer(tokenizer):
    """The same BPE with OpenAI's id order: <|startoftext|> and <|endoftext|> are the two highest ids."""
    from transformers import CLIPTokenizer

    vocab = tokenizer.get_vocab()
    specials = ["<|startoftext|>", "<|endoftext|>"]
    order = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if t not in specials] + specials
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    tok = CLIPTokenizer(vocab={t: i for i, t in enumerate(order)}, merges=[tuple(m) if isinstance(m, list) else
                                                                          tuple(m.split(" ")) for m in merges])
    assert tok.eos_token_id == len(tok) - 1 and tok.bos_token_id == len(tok) - 2
    return tok


def openai_state_dict(vocab: int, positions: int, two_tables: bool = False, seed: int = 0,
                      vw: int = 128, tw: int = 128, layers: int = 2, patch: int = 8, image: int = 32, embed: int = 24):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.05):
        return torch.randn(*shape, generator=g) * scale

    sd = {"visual.conv1.weight": r(vw, 3, patch, patch), "visual.class_embedding": r(vw, scale=0.5),
          "visual.positional_embedding": r((image // patch) ** 2 + 1, vw, scale=0.5),
          "visual.ln_pre.weight": 1 + r(vw), "visual.ln_pre.bias": r(vw), "visual.ln_post.weight": 1 + r(vw),
          "visual.ln_post.bias": r(vw), "visual.proj": r(vw, embed, scale=0.1),
          "token_embedding.weight": r(vocab, tw, scale=0.5), "positional_embedding": r(positions, tw, scale=0.5),
          "ln_final.weight": 1 + r(tw), "ln_final.bias": r(tw), "text_projection": r(tw, embed, scale=0.1),
          "logit_scale": torch.tensor(math.log(1 / 0.07)), "input_resolution": torch.tensor(image),
          "context_length": torch.tensor(positions), "vocab_size": torch.tensor(vocab)}
    if two_tables:
        sd["positional_embedding_res"] = r(positions, tw, scale=0.5)
        sd["mask1"] = (torch.arange(positions) < 20).float()[:, None]
        sd["mask2"] = 1 - sd["mask1"]
    for prefix, w in (("visual.transformer.resblocks", vw), ("transformer.resblocks", tw)):
        for i in range(layers):
            p = f"{prefix}.{i}"
            sd.update({f"{p}.attn.in_proj_weight": r(3 * w, w, scale=w ** -0.5), f"{p}.attn.in_proj_bias": r(3 * w),
                       f"{p}.attn.out_proj.weight": r(w, w, scale=w ** -0.5), f"{p}.attn.out_proj.bias": r(w),
                       f"{p}.ln_1.weight": 1 + r(w), f"{p}.ln_1.bias": r(w), f"{p}.ln_2.weight": 1 + r(w),
                       f"{p}.ln_2.bias": r(w), f"{p}.mlp.c_fc.weight": r(4 * w, w, scale=w ** -0.5),
                       f"{p}.mlp.c_fc.bias": r(4 * w), f"{p}.mlp.c_proj.weight": r(w, 4 * w, scale=(4 * w) ** -0.5),
                       f"{p}.mlp.c_proj.bias": r(w)})
    return sd


def _ln(x, sd, name):
    return F.layer_norm(x, (x.shape[-1],), sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-5)


def _ref_attention(x, sd, p, heads, mask):
    b, n, d = x.shape
    q, k, v = (x @ sd[f"{p}.attn.in_proj_weight"].t() + sd[f"{p}.attn.in_proj_bias"]).chunk(3, dim=-1)
    q, k, v = (t.reshape(b, n, heads, d // heads).transpose(1, 2) for t in (q, k, v))
    att = q @ k.transpose(-1, -2) / math.sqrt(d // heads) + mask
    out = (att.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, d)
    return out @ sd[f"{p}.attn.out_proj.weight"].t() + sd[f"{p}.attn.out_proj.bias"]


def _ref_tower(x, sd, prefix, layers, heads, mask):
    """Pre-norm residual attention blocks with QuickGELU, as OpenAI's ResidualAttentionBlock."""
    for i in range(layers):
        p = f"{prefix}.{i}"
        x = x + _ref_attention(_ln(x, sd, f"{p}.ln_1"), sd, p, heads, mask)
        h = _ln(x, sd, f"{p}.ln_2") @ sd[f"{p}.mlp.c_fc.weight"].t() + sd[f"{p}.mlp.c_fc.bias"]
        h = h * torch.sigmoid(1.702 * h)
        x = x + h @ sd[f"{p}.mlp.c_proj.weight"].t() + sd[f"{p}.mlp.c_proj.bias"]
    return x


def ref_image_features(sd, pixels, layers=2, heads=2):
    patch = sd["visual.conv1.weight"].shape[-1]
    x = F.conv2d(pixels, sd["visual.conv1.weight"], stride=patch).flatten(2).transpose(1, 2)
    cls = sd["visual.class_embedding"].expand(x.shape[0], 1, -1)
    x = _ln(torch.cat([cls, x], dim=1) + sd["visual.positional_embedding"], sd, "visual.ln_pre")
    x = _ref_tower(x, sd, "visual.transformer.resblocks", layers, heads, 0.0)
    return _ln(x[:, 0], sd, "visual.ln_post") @ sd["visual.proj"]


def ref_text_features(sd, ids, layers=2, heads=2):
    n = ids.shape[1]
    pos = sd["positional_embedding"]
    if "positional_embedding_res" in sd:                         # Long-CLIP: pe * mask1 + pe_res * mask2
        mask1 = (torch.arange(pos.shape[0]) < 20).float()[:, None]
        pos = pos * mask1 + sd["positional_embedding_res"] * (1 - mask1)
    x = sd["token_embedding.weight"][ids] + pos[:n]
    causal = torch.full((n, n), float("-inf")).triu(1)
    x = _ln(_ref_tower(x, sd, "transformer.resblocks", layers, heads, causal), sd, "ln_final")
    return x[torch.arange(ids.shape[0]), ids.argmax(dim=-1)] @ sd["text_projection"]


@pytest.fixture(scope="module")
def openai_tok_dir(tmp_path_factory, tokenizer):
    out = tmp_path_factory.mktemp("openai_tok")
    openai_tokenizer(tokenizer).save_pretrained(out)
    return out


@pytest.mark.parametrize("positions,two_tables", [(77, False), (248, False), (248, True)])
def test_converter_matches_the_openai_layout_forward(tmp_path, openai_tok_dir, positions, two_tables):
    from transformers import AutoTokenizer, CLIPModel

    tok = AutoTokenizer.from_pretrained(openai_tok_dir)
    vocab = len(tok)
    sd = openai_state_dict(vocab, positions, two_tables)
    src = tmp_path / "longclip.pt"
    torch.save(sd, src)
    out = convert_clip(src, tmp_path / "hf", tokenizer_dir=str(openai_tok_dir))
    model = CLIPModel.from_pretrained(out).eval()
    cfg = model.config
    assert (cfg.text_config.max_position_embeddings, cfg.vision_config.image_size, cfg.vision_config.patch_size,
            cfg.projection_dim, cfg.text_config.num_attention_heads) == (positions, 32, 8, 24, 2)
    assert C.model_lineage(model).get("family") == ("Long-CLIP" if two_tables else None)
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(3, 3, 32, 32, generator=g)
    lengths = [5, 60, min(positions, 200)]
    ids = torch.zeros(3, max(lengths), dtype=torch.long)                   # OpenAI pads with 0 after end-of-text
    for row, n in enumerate(lengths):
        ids[row, 0], ids[row, n - 1] = vocab - 2, vocab - 1
        ids[row, 1:n - 1] = torch.randint(2, vocab - 2, (n - 2,), generator=g)
    mask = (torch.arange(ids.shape[1]) < torch.tensor(lengths)[:, None]).long()
    with torch.no_grad():
        ours_img = C.image_features(model, pixels)
        ours_txt = C.text_features(model, ids, mask)
        ref_img, ref_txt = ref_image_features(sd, pixels), ref_text_features(sd, ids)
    assert torch.allclose(ours_img, ref_img, atol=1e-5), (ours_img - ref_img).abs().max()
    assert torch.allclose(ours_txt, ref_txt, atol=1e-5), (ours_txt - ref_txt).abs().max()
    assert ref_txt.abs().max() > 0.1                                     # features of a real scale, not ~0
    _, processor = C.load_clip(str(out))
    ip = processor.image_processor
    assert processor.tokenizer.model_max_length == positions
    assert (ip.size["shortest_edge"], ip.crop_size["height"], int(ip.resample)) == (32, 32, 3)
    assert tuple(ip.image_mean) == (0.48145466, 0.4578275, 0.40821073)
    assert tuple(ip.image_std) == (0.26862954, 0.26130258, 0.27577711)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_converter_refuses_code_pickles_and_explains_what_is_missing(tmp_path, tokenizer, openai_tok_dir):
    from sdx.cli import main as sdx_main

    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"visual.proj": torch.zeros(2, 2), "payload": _RunsCode(str(marker))}, evil)
    with pytest.raises(ValueError, match="weights_only=True"):
        convert_clip(evil, tmp_path / "out", tokenizer_dir=str(openai_tok_dir))
    assert not marker.exists()
    good = tmp_path / "plain" / "clip.pt"
    good.parent.mkdir()
    torch.save(openai_state_dict(len(tokenizer), 77), good)
    with pytest.raises(FileNotFoundError, match="--tokenizer DIR"):
        convert_clip(good, tmp_path / "out")                              # nothing beside it, none given
    with pytest.raises(ValueError, match="not the highest id"):
        local = tmp_path / "local_tok"
        tokenizer.save_pretrained(local)
        convert_clip(good, tmp_path / "out", tokenizer_dir=str(local))
    with pytest.raises(ValueError, match="rows but the tokenizer has"):
        torch.save(openai_state_dict(len(tokenizer) + 3, 77), good)
        convert_clip(good, tmp_path / "out", tokenizer_dir=str(openai_tok_dir))
    torch.save(openai_state_dict(len(tokenizer), 77), good)
    out = sdx_main(["convert-clip", str(good), str(tmp_path / "cli"), "--tokenizer", str(openai_tok_dir),
                    "--family", "OpenAI CLIP"])
    assert json.loads((out / "config.json").read_text())["sdx_lineage"]["family"] == "OpenAI CLIP"


# -------------------------------------------------------------------------------------------------------------
# train and evaluate a 248-position CLIP on the real fixture's T3 captions
# -------------------------------------------------------------------------------------------------------------
NEU = ["Bright scratch", "Crazing", "Inclusion", "Patches", "Pitted surface", "Rolled in scale"]


@pytest.mark.slow
def test_248_position_clip_trains_on_real_t3_and_the_evaluator_reads_every_token(tmp_path, real_subset):
    import train_clip
    from sdx.bench.cli import main as bench_main

    out = tmp_path / "long"
    common = ["--data_dir", str(real_subset), "--cache_dir", str(tmp_path / "hf"), "--classes", *NEU,
              "--max_eval_samples", "24", "--per_device_eval_batch_size", "32", "--seed", "1"]
    res = train_clip.main(common + ["--output_dir", str(out), "--caption_level", "t3", "--model_size", "tiny",
                                    "--image_size", "32", "--stretch_positions", "248", "--loss", "long_clip",
                                    "--max_train_samples", "48", "--max_train_steps", "2",
                                    "--per_device_train_batch_size", "16", "--weight_decay", "0.1"])
    budget = res["text_budget"]
    t3 = budget["levels"]["t3 captions (train)"]
    assert budget["max_length"] == budget["text_positions"] == 248
    assert t3["texts"] > 40 and t3["truncated"] == 0 and t3["longest"] > 77       # long, and none cut
    assert json.loads((out / "config.json").read_text())["text_config"]["max_position_embeddings"] == 248
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 248
    assert "| t3 captions (train) |" in (out / "README.md").read_text()
    meta = json.loads((out / "sdx_run.json").read_text())
    assert meta["details"]["held_positions"] == 20 and meta["details"]["lineage"]["stretched"]["to"] == 248

    bench = bench_main(["--data_dir", str(real_subset), "--cache_dir", str(tmp_path / "hf"), "--output_dir",
                        str(tmp_path / "bench"), "--model_name_or_path", f"t3={out}", "--tasks", "task2,retrieval",
                        "--max_eval_samples", "24", "--no_progress"])
    levels = bench["text_budget"]["long"]["levels"]
    assert levels["t3"]["texts"] > 40 and levels["t3"]["truncated"] == 0 and levels["t3"]["longest"] > 77
    report = (tmp_path / "bench" / "report.md").read_text()
    assert "| long | 248 / 248 | t3 |" in report and "No model here descends from a Long-CLIP" in report
    cut = bench_main(["--data_dir", str(real_subset), "--cache_dir", str(tmp_path / "hf"), "--output_dir",
                      str(tmp_path / "bench77"), "--model_name_or_path", f"t3={out}", "--tasks", "retrieval",
                      "--max_eval_samples", "24", "--no_progress", "--max_seq_length", "77",
                      "--embedding_cache_dir", str(tmp_path / "bench" / "cache")])
    t3_cut = cut["text_budget"]["long"]["levels"]["t3"]
    assert t3_cut["truncated"] > 0 and t3_cut["warning"]
    assert cut["cache"]["text"]["encoded"] > 0 and cut["cache"]["image"]["encoded"] == 0   # texts: a new budget


@pytest.mark.slow
def test_trainer_counts_and_warns_about_truncated_captions(tmp_path, caplog):
    import train_clip
    from sdx.data.synthetic import generate

    data = tmp_path / "syn"
    generate(data, train_per_class=4, val_per_class=2, size=32, classes=["Patches", "Punching", "Water spot"],
             progress=False)
    with caplog.at_level("WARNING"):
        res = train_clip.main(["--data_dir", str(data), "--cache_dir", str(tmp_path / "hf"), "--output_dir",
                               str(tmp_path / "run"), "--caption_level", "t3", "--max_seq_length", "30",
                               "--max_train_steps", "1", "--per_device_train_batch_size", "4",
                               "--validation_fraction", "0.25", "--eval_strategy", "no"])
    t3 = res["text_budget"]["levels"]["t3 captions (train)"]
    assert res["text_budget"]["max_length"] == 30 and t3["truncated"] == t3["texts"] > 0 and t3["warning"]
    assert any("TRUNCATION" in r.getMessage() and "t3 captions (train)" in r.getMessage() for r in caplog.records)
    assert "**Warning: more than 1 % of the texts of t3 captions (train)" in (tmp_path / "run" / "README.md").read_text()
    # the saved tokenizer reads every position of the model, whatever the training budget was
    assert json.loads((tmp_path / "run" / "tokenizer_config.json").read_text())["model_max_length"] == 128
    with pytest.raises(SystemExit):
        train_clip.main(["--output_dir", str(tmp_path / "x"), "--loss", "long_clip", "--caption_level", "t0"])


@pytest.mark.slow
def test_main_job_runs_a_248_position_checkpoint_from_a_local_folder(tmp_path, monkeypatch):
    from sdx import pipeline
    from sdx.data.synthetic import default_dataset_dir

    monkeypatch.setenv("STEELDEFECTX_CACHE", str(tmp_path / "syn"))
    n_train, n_val = pipeline.PRESETS["smoke"]["synthetic_size"]
    data = default_dataset_dir(train_per_class=n_train, val_per_class=n_val)
    texts = [T.render_t3(r["structured_attributes"]) + " " + r["natural_language_description"]
             for r in json.loads((data / "train-text.json").read_text())]
    model, processor = C.build_clip_from_scratch("tiny", texts, vocab_size=800, max_text_length=248, seed=0)
    processor.tokenizer.model_max_length = 77                            # an OpenAI-style tokenizer config
    model.save_pretrained(tmp_path / "long")
    processor.save_pretrained(tmp_path / "long")
    summary = pipeline.main(["--preset", "smoke", "--output_dir", str(tmp_path / "run"), "--clip_levels", "t3",
                             "--transfer_level", "none", "--tasks", "task2,retrieval",
                             "--clip_model_name_or_path", str(tmp_path / "long")])
    budget = summary["clip"]["clip_t3"]["text_budget"]
    assert budget["max_length"] == budget["text_positions"] == 248
    results = json.loads((tmp_path / "run" / "bench" / "results.json").read_text())
    assert results["text_budget"]["clip_t3"]["max_length"] == 248
    t3 = results["text_budget"]["clip_t3"]["levels"]["t3"]
    assert t3["truncated"] == 0 and t3["longest"] > 77


@pytest.mark.slow
def test_gpu_long_clip_script_runs_on_the_cpu_at_a_tiny_size(tmp_path):
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("gpu_long_clip", ROOT / "bench" / "gpu_long_clip.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    res = script.main(["--size", "tiny", "--device", "cpu", "--batch_size", "4", "--steps", "2", "--warmup", "1",
                       "--modes", "eager", "--output", str(tmp_path / "gpu.json")])
    rows = {r["positions"]: r for r in res["rows"]}
    assert set(rows) == {77, 248} and rows[248]["gflop_per_step"] > rows[77]["gflop_per_step"] > 0
    assert json.loads((tmp_path / "gpu.json").read_text())["rows"][0]["images_per_s"] > 0
