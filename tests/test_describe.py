"""Tests of ``describe``: the authors' candidate selection (hand-computed), the run against a real HTTP chat
server on 127.0.0.1 (retries, failures by name, cache, resume after a kill, no key in any file), the geometric
describer, and a plant's folder of images and masks turned into a dataset that load_steeldefectx reads."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from chat_server import ChatServer
from conftest import ROOT

from sdx.annotate import describe as D
from sdx.annotate.llm import EndpointFatal
from sdx.cli import data_main

FAKE_KEY = "sk-test-FAKE-0123456789abcdef"
CLASSES = ["Bright scratch", "Punching", "Rolled in scale"]


# ----------------------------------------------------------------------------------------------------------
# candidate selection, hand-computed
# ----------------------------------------------------------------------------------------------------------
def test_diversity_filter_threshold_and_keep():
    sim = np.array([[1.00, 0.95, 0.89, 0.50],
                    [0.95, 1.00, 0.20, 0.30],
                    [0.89, 0.20, 1.00, 0.10],
                    [0.50, 0.30, 0.10, 1.00]])
    assert D.select_diverse(sim) == [0, 2, 3]            # 0.95 >= 0.9 dropped, 0.89 kept
    edge = np.array([[1.0, 0.9], [0.9, 1.0]])
    assert D.select_diverse(edge) == [0]                  # "below 0.9": exactly 0.9 is too similar
    assert D.select_diverse(np.eye(5)) == [0, 1, 2]       # at most three kept, in sampling order


def test_coverage_keywords_and_score():
    text = "A small round dent near the top with sharp edges."
    assert D.covered_dimensions(text) == ["shape", "size", "position", "contrast"]
    assert D.covered_dimensions("The mark stops here.") == ["position"]   # substring match: "stops" has "top"
    assert D.score(4, 0.25) == pytest.approx(0.6 * 4 / 5 + 0.4 * 0.75)  # 0.78
    assert D.score(0, 1.0) == 0.0


def test_select_description_scores_and_incomplete_last():
    texts = ["Round shallow dent at the top.", "Small mark.", "Round large deep dent at the left, faint",
             "Never looked at."]
    sim = np.array([[1.0, 0.2, 0.4, 0.1],
                    [0.2, 1.0, 0.6, 0.1],
                    [0.4, 0.6, 1.0, 0.1],
                    [0.1, 0.1, 0.1, 1.0]])
    picked = D.select_description(texts, lambda _: sim, ask_questions=lambda: pytest.fail("no fallback"))
    assert picked["sampled"] == 4 and picked["kept"] == 3                   # three kept: the fourth is not read
    by_text = {c["text"]: c for c in picked["candidates"]}
    # mean similarity to the other kept ones: (0.2+0.4)/2, (0.2+0.6)/2, (0.4+0.6)/2
    assert [by_text[t]["similarity"] for t in texts[:3]] == [0.3, 0.4, 0.5]
    assert by_text[texts[0]]["dimensions"] == ["shape", "depth", "position"]
    assert by_text[texts[0]]["score"] == round(0.6 * 3 / 5 + 0.4 * 0.7, 4)                 # 0.64
    assert by_text[texts[1]]["score"] == round(0.6 * 1 / 5 + 0.4 * 0.6, 4)                 # 0.36
    assert by_text[texts[2]]["score"] == round(0.6 * 5 / 5 + 0.4 * 0.5, 4)                 # 0.8, incomplete
    assert [c["text"] for c in picked["candidates"]] == texts[:3]                          # incomplete last
    assert picked["description"] == texts[0] and not picked["fallback"]


def test_six_question_fallback_joins_answers_with_similarity_half():
    texts = ["Dark mark.", "A blemish.", "Some spot."]          # no dimension covered
    asked = []

    def ask():
        asked.append(1)
        return "It is irregular. It spans the width. It is shallow. It sits at the top. Low contrast."

    picked = D.select_description(texts, lambda t: np.eye(len(t)), ask_questions=ask)
    assert asked == [1] and picked["fallback"]
    top = picked["candidates"][0]
    assert top["source"] == "six questions" and top["similarity"] == 0.5
    assert top["score"] == round(0.6 * 5 / 5 + 0.4 * 0.5, 4)             # 0.8 beats 0.4 for the others
    assert picked["description"] == top["text"]
    assert [c["score"] for c in picked["candidates"][1:]] == [0.4, 0.4, 0.4]
    # one kept candidate covering 4 dimensions: no fallback
    good = ["Small round dent at the top, sharp.", "x y z."]
    assert not D.select_description(good, lambda t: np.eye(2), ask_questions=lambda: pytest.fail("asked"))["fallback"]


def test_tfidf_similarity_is_cosine_of_tfidf():
    sim = D.TfidfSimilarity()(["small round dent", "small round dent", "large scratch left"])
    assert sim[0, 1] == pytest.approx(1.0) and sim[0, 2] == 0.0
    assert D.TfidfSimilarity()(["", ""]).tolist() == [[0.0, 0.0], [0.0, 0.0]]


def test_embedding_model_without_sentence_transformers_is_a_clear_error(tmp_path):
    pytest.importorskip("sklearn")
    try:
        import sentence_transformers  # noqa: F401
        pytest.skip("sentence-transformers is installed here")
    except ImportError:
        pass
    with pytest.raises(ValueError, match="needs the sentence-transformers package"):
        D.make_similarity(str(tmp_path))


# ----------------------------------------------------------------------------------------------------------
# against the test server
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """Three classes, 2 train + 1 val images each, in the official layout (synthetic: demo data, not steel)."""
    from sdx.data.synthetic import generate

    out = tmp_path_factory.mktemp("syn") / "data"
    generate(out, train_per_class=2, val_per_class=1, classes=CLASSES, progress=False)
    return out


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# Candidate texts with disjoint words (TF-IDF cosine exactly 0 between them, 1 for a repeat).
S1 = "Small round dent near top, sharp edges."            # shape size position contrast: 4
S2 = "Large scratch across left half."                    # size position: 2
S3 = "Linear groove spans shallow bottom corner, faint"   # 5 dimensions, incomplete
WEAK = ["Dark blemish.", "Grey mottling.", "Uneven tint.", "Dull stain."]  # no dimension
SIX = ["Elongated irregular mark.", "Linear.", "It spans most width.", "Shallow.", "At the top.", "Low contrast."]


class Script:
    """Per image: candidates in sampling order; answers to the six questions; failing images; 429 once."""

    def __init__(self, plans: dict[str, list[str]], failing: set[str] = frozenset(), throttle: set[str] = frozenset()):
        self.plans, self.failing, self.throttle = plans, set(failing), set(throttle)
        self.served: dict[str, int] = {}

    def __call__(self, req):
        if req.authorization != f"Bearer {FAKE_KEY}":
            return 401, "bad key"
        if req.image_sha256 in self.failing:
            return 500, "scripted server error"
        if req.image_sha256 in self.throttle:
            self.throttle.discard(req.image_sha256)
            return 429, "slow down"
        if req.prompt in D.DEFAULT_QUESTIONS:
            return 200, SIX[D.DEFAULT_QUESTIONS.index(req.prompt)]
        k = self.served.get(req.image_sha256, 0)
        self.served[req.image_sha256] = k + 1
        plan = self.plans.get(req.image_sha256, [S1, S2, WEAK[0], WEAK[1]])
        return 200, plan[k % len(plan)]


def describe_cli(server, image_dir: Path, out: Path, *extra: str):
    return data_main(["describe", "--image_dir", str(image_dir), "--output", str(out), "--api_base", server.url,
                      "--model", "test-model", "--quiet", "--max_retries", "2", "--retry_backoff", "0.01",
                      "--concurrency", "2", *extra])


def files_under(*folders: Path) -> list[Path]:
    return [p for f in folders for p in f.rglob("*") if p.is_file()]


def test_describe_against_server(synthetic, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    train = synthetic / "train"
    a, b, c = (train / n for n in ("bs_01.jpg", "pu_01.jpg", "rs_01.jpg"))
    script = Script({sha(a): [S1, S1, S2, S3], sha(b): WEAK}, failing={sha(c)}, throttle={sha(a)})
    out = tmp_path / "out" / "train-t2.json"
    with ChatServer(script, delay=0.02) as server:
        summary = describe_cli(server, train, out)
        images = sorted(p.name for p in train.iterdir())
        assert summary["images"] == 6 and summary["described"] == 5 and summary["failed"] == 1
        assert summary["failures"][0].startswith("rs_01.jpg: HTTP 500") and "scripted server error" in \
            summary["failures"][0]
        records = json.loads(out.read_text())
        assert [r["image_name"] for r in records] == [n for n in images if n != "rs_01.jpg"]
        t2 = {r["image_name"]: r["natural_language_description"] for r in records}
        assert t2["bs_01.jpg"] == S1 and t2["pu_01.jpg"] == " ".join(SIX)
        assert all(r["structured_attributes"] is None and r["template_sentence"] == "" for r in records)
        report = json.loads((tmp_path / "out" / "train-t2.report.json").read_text())
        assert report["describer"]["embedding"]["kind"] == "tfidf"
        cands = report["images_detail"]["bs_01.jpg"]["candidates"]
        assert [(x["text"], x["score"], x["complete"]) for x in cands] == [
            (S1, 0.88, True), (S2, 0.64, True), (S3, 1.0, False)]      # 0.6*4/5+0.4, 0.6*2/5+0.4, 0.6+0.4
        assert report["images_detail"]["pu_01.jpg"]["fallback"] and summary["fallback_used"] == 1
        # requests: a 4 + 1 retry; b 4 + 6 questions; c 3 attempts; the 3 others 4 each
        assert summary["requests"] == server.count() == 5 + 10 + 3 + 12 and summary["retries"] == 1 + 2
        assert server.count(lambda r: r.image_sha256 == sha(a) and r.prompt in D.DEFAULT_QUESTIONS) == 0
        assert 1 < server.max_in_flight <= 2
        sent = server.requests[0].body
        assert (sent["temperature"], sent["top_p"], sent["max_tokens"], sent["model"]) == (0.9, 0.9, 80, "test-model")
        # a re-run asks only for the failed image; once the server recovers, only its 4 candidates
        again = describe_cli(server, train, out)
        assert again["requests"] == 3 and again["cache_hits"] == 4 * 5 + 6 and again["failed"] == 1
        script.failing.clear()
        healed = describe_cli(server, train, out)
        assert healed["requests"] == 4 and healed["failed"] == 0 and healed["described"] == 6
        assert describe_cli(server, train, out)["requests"] == 0
    # the key reached the server, and no file, cache entry or printed line
    leaked = [p for p in files_under(tmp_path) if FAKE_KEY.encode() in p.read_bytes()]
    assert leaked == [] and FAKE_KEY not in capsys.readouterr().out
    assert any((tmp_path / "out" / "llm_cache").rglob("*.json"))


def test_bad_key_stops_the_run_with_a_clear_error(synthetic, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key")
    with ChatServer(Script({})) as server:
        with pytest.raises(EndpointFatal, match=r"HTTP 401.*\$OPENAI_API_KEY") as err:
            describe_cli(server, synthetic / "train", tmp_path / "t2.json")
        assert "sk-wrong-key" not in str(err.value)
        assert server.count() <= 2                       # stopped at once, not once per image
    assert not (tmp_path / "t2.json").exists()


def test_unreachable_endpoint_stops_the_run(synthetic, tmp_path):
    import socket

    with socket.socket() as sock:                    # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(EndpointFatal, match="cannot reach the endpoint"):
        data_main(["describe", "--image_dir", str(synthetic / "train"), "--output", str(tmp_path / "t2.json"),
                   "--api_base", f"http://127.0.0.1:{port}/v1", "--model", "m", "--quiet", "--max_retries", "1",
                   "--retry_backoff", "0.01"])
    assert not (tmp_path / "t2.json").exists()


def test_no_model_describer_and_missing_mask_is_counted(synthetic, tmp_path):
    masks = tmp_path / "masks"
    shutil.copytree(synthetic / "train_mask", masks)
    (masks / "pu_02.png").unlink()
    out = tmp_path / "t2.json"
    summary = data_main(["describe", "--no_model", "--image_dir", str(synthetic / "train"), "--mask_dir", str(masks),
                         "--output", str(out), "--quiet"])
    assert summary["images"] == 6 and summary["described"] == 5 and summary["failures"] == [
        f"pu_02.jpg: no mask for image {synthetic / 'train' / 'pu_02.jpg'}"]
    records = {r["image_name"]: r["natural_language_description"] for r in json.loads(out.read_text())}
    release = {r["image_name"]: r for r in json.loads((synthetic / "train-text.json").read_text())}
    for name, text in records.items():
        t3 = release[name]["structured_attributes"]
        assert text.startswith(f"The {release[name]['class_name'].lower()} defect appears as"), text
        assert {"dark": "darker", "bright": "brighter", "neutral": "similar in tone"}[t3["Polarity"]] in text
        assert t3["Position"][0][0] in text or "most of the" in text, text
    again = data_main(["describe", "--no_model", "--image_dir", str(synthetic / "train"), "--mask_dir", str(masks),
                       "--output", str(tmp_path / "again.json"), "--quiet"])
    assert json.loads((tmp_path / "again.json").read_text()) == json.loads(out.read_text())   # deterministic
    assert again["describer"]["kind"] == "geometric"


# ----------------------------------------------------------------------------------------------------------
# a plant's folder of images and masks -> a full T0-T4 dataset
# ----------------------------------------------------------------------------------------------------------
def plant_folder(synthetic: Path, dest: Path) -> Path:
    """Only what a plant has: images, masks and one sentence per class (no text files)."""
    dest.mkdir()
    for name in ("train", "val", "train_mask", "val_mask"):
        shutil.copytree(synthetic / name, dest / name)
    shutil.copy(synthetic / "class_descriptions.json", dest)
    return dest


def fields_answer(req):
    if req.image_sha256 is not None:
        return 200, S1 if "Describe" in req.prompt else SIX[0]
    return 200, '```json\n{"Shape": "Patch_like", "Direction": "Horizontal", "Spatial Distribution": "scattered"}\n```'


def test_plant_folder_becomes_a_dataset(synthetic, tmp_path, monkeypatch):
    from sdx.data.builder import load_steeldefectx
    from sdx.data.levels import render_t4, row_level_texts

    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    plant = plant_folder(synthetic, tmp_path / "plant")
    work = tmp_path / "work"
    with ChatServer(fields_answer) as server:
        for split in ("train", "val"):
            ep = ["--api_base", server.url, "--model", "m", "--quiet", "--llm_cache_dir", str(work / "cache")]
            data_main(["describe", "--image_dir", str(plant / split), "--output", str(work / f"{split}-t2.json"), *ep])
            data_main(["annotate", "--image_dir", str(plant / split), "--mask_dir", str(plant / f"{split}_mask"),
                       "--descriptions", str(work / f"{split}-t2.json"), "--output", str(plant / f"{split}-text.json"),
                       "--llm_fields", *ep])
    ds = load_steeldefectx(plant, cache_dir=str(tmp_path / "hf"), validation_fraction=0.0)
    rows = [row for split in ds for row in ds[split]]
    assert len(rows) == 9
    for row in rows:
        texts = row_level_texts(row)
        assert texts["t2"] == S1
        assert "patch-like shape" in texts["t4"] and texts["t1"] and texts["t0"]
    records = json.loads((plant / "train-text.json").read_text())
    for rec in records:
        t3 = rec["structured_attributes"]
        assert (t3["Shape"], t3["Direction"]) == ("patch-like", "horizontal")
        assert t3["Spatial Distribution"] == ("isolated" if t3["Number of Defects"] == "one" else "scattered")
        assert rec["template_sentence"] == render_t4(t3)
    geometric = json.loads((plant / "train-text.geometric.json").read_text())
    assert [r["image_name"] for r in geometric] == [r["image_name"] for r in records]
    assert (plant / "train-text.agreement.md").read_text().count("| Bright scratch |") == 1


def test_plant_folder_without_a_model(synthetic, tmp_path):
    from sdx.data.builder import load_steeldefectx
    from sdx.data.levels import row_level_texts

    plant = plant_folder(synthetic, tmp_path / "plant")
    for split in ("train", "val"):
        t2 = tmp_path / f"{split}-t2.json"
        data_main(["describe", "--no_model", "--image_dir", str(plant / split), "--mask_dir",
                   str(plant / f"{split}_mask"), "--output", str(t2), "--quiet"])
        data_main(["annotate", "--image_dir", str(plant / split), "--mask_dir", str(plant / f"{split}_mask"),
                   "--descriptions", str(t2), "--output", str(plant / f"{split}-text.json"), "--quiet"])
    ds = load_steeldefectx(plant, cache_dir=str(tmp_path / "hf"), validation_fraction=0.0)
    rows = [row for split in ds for row in ds[split]]
    assert len(rows) == 9 and all(row_level_texts(r)["t2"].startswith("The ") for r in rows)


# ----------------------------------------------------------------------------------------------------------
# resume after a kill
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_resume_after_kill_makes_only_the_missing_requests(synthetic, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    images = tmp_path / "images"
    shutil.copytree(synthetic / "train", images)
    for src in sorted((synthetic / "val").iterdir()):
        shutil.copy(src, images / src.name)                      # 9 images, 36 candidate requests
    out, cache = tmp_path / "t2.json", tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # every candidate covers 4 dimensions: no fallback, whichever answers the killed run left uncached
    with ChatServer(lambda req: (200, S1), delay=0.1) as server:
        cmd = [sys.executable, "-m", "sdx", "describe", "--image_dir", str(images), "--output", str(out),
               "--api_base", server.url, "--model", "m", "--quiet", "--concurrency", "2", "--llm_cache_dir",
               str(cache), "--checkpoint_every", "1"]
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while server.count() < 14 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        assert not out.exists()                                   # the final file is written only at the end
        cached = len(list(cache.rglob("*.json")))
        assert 12 <= cached < 36
        partial = json.loads((tmp_path / "t2.partial.json").read_text())
        assert 1 <= len(partial) < 9                               # checkpoint: images done before the kill
        before = server.count()
        summary = data_main(cmd[3:])
        assert summary["requests"] == 36 - cached == server.count() - before
        assert summary["cache_hits"] == cached and summary["described"] == 9
        assert not (tmp_path / "t2.partial.json").exists()
        assert data_main(cmd[3:])["requests"] == 0
