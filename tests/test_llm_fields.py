"""Tests of ``annotate --llm_fields``: parsing and canonicalisation of the model's answer (hand-written cases),
the one-component rule, and the run against a real HTTP chat server (fields, T4, failures by name, the
agreement table with the geometric rules)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from chat_server import ChatServer

from sdx.annotate import engine
from sdx.annotate import fields as F
from sdx.cli import data_main
from sdx.data.levels import DIRECTIONS, DISTRIBUTIONS, SHAPES, render_t4


@pytest.mark.parametrize("value, allowed, expected", [
    ("Linear", SHAPES, "linear"),
    ("  spot_like ", SHAPES, "spot-like"),                  # lower-case, "_" -> "-"
    ("mostly curved line", SHAPES, "curved"),               # contained allowed value
    ("curvilinear", SHAPES, "linear"),                      # substring rule, as the authors'
    ("non-linear, irregular", SHAPES, "irregular"),         # first in sorted order wins
    ("blob", SHAPES, "unclear"),
    ("", SHAPES, "unclear"),
    ("Diagonal (45 degrees)", DIRECTIONS, "diagonal"),
    ("horizontal and vertical", DIRECTIONS, "horizontal"),  # sorted: diagonal, horizontal, none, vertical
    ("no clear direction", DIRECTIONS, "none"),              # fallback
    ("None", DIRECTIONS, "none"),
    ("Clustered.", DISTRIBUTIONS, "clustered"),
    ("clusters", DISTRIBUTIONS, "unclear"),                 # "clustered" is not in "clusters"
])
def test_canonicalize(value, allowed, expected):
    fallback = {SHAPES: "unclear", DIRECTIONS: "none", DISTRIBUTIONS: "unclear"}[allowed]
    assert F.canonicalize(value, allowed, fallback) == expected


def test_parse_answer_json_fences_and_lines():
    fenced = '```json\n{"Shape": "Linear", "Direction": null, "Spatial Distribution": "scattered"}\n```'
    assert F.parse_answer(fenced) == {"Shape": "Linear", "Direction": "None", "Spatial Distribution": "scattered"}
    lines = "Shape: spot_like,\nDirection: vertical\nSpatial Distribution: clustered"
    assert F.parse_answer(lines) == {"Shape": "spot_like", "Direction": "vertical",
                                     "Spatial Distribution": "clustered"}
    # quoted keys outside a JSON object are not recognised (the authors' parser): fallbacks
    assert F.read_fields('"Shape": "linear"\n"Direction": "vertical"', 3) == {
        "Shape": "unclear", "Direction": "none", "Spatial Distribution": "unclear"}
    assert F.read_fields("I cannot tell.", 2) == {"Shape": "unclear", "Direction": "none",
                                                  "Spatial Distribution": "unclear"}


def test_one_component_forces_isolated():
    answer = '{"Shape": "patch-like", "Direction": "none", "Spatial Distribution": "scattered"}'
    assert F.read_fields(answer, 1)["Spatial Distribution"] == "isolated"
    assert F.read_fields(answer, 2)["Spatial Distribution"] == "scattered"
    assert F.read_fields(answer, 0)["Spatial Distribution"] == "scattered"


def test_prompt_lists_sorted_values_count_and_description():
    prompt = F.field_prompt("A thin bright line.", 3)
    assert f"Shape: {', '.join(sorted(SHAPES))}" in prompt
    assert "component_count: 3" in prompt and prompt.endswith("description: A thin bright line.")


def test_agreement_per_class_with_chance():
    geo = {"Shape": "linear", "Direction": "vertical", "Spatial Distribution": "isolated"}
    rows = [{"class_name": "A", "geometric": geo, "model": geo},
            {"class_name": "A", "geometric": dict(geo, Shape="curved"), "model": geo},
            {"class_name": "B", "geometric": geo, "model": dict(geo, Direction="none")}]
    table = F.agreement(rows)
    a = table["classes"]["A"]
    assert a["n"] == 2 and a["Shape"] == {"agree": 0.5, "chance": 0.5}   # geo 1/2 linear x model 2/2 linear
    assert table["classes"]["B"]["Direction"] == {"agree": 0.0, "chance": 0.0}
    assert table["all"]["Shape"]["disagreements"] == [["curved", "linear", 1]]
    assert table["all"]["Spatial Distribution"]["kappa"] is None          # one value on both sides
    md = F.format_agreement(table)
    assert "| A | 2 | 50% (chance 50%) |" in md and "| **all** | 3 |" in md


# ----------------------------------------------------------------------------------------------------------
# against the test server
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    from sdx.data.synthetic import generate

    out = tmp_path_factory.mktemp("syn") / "data"
    generate(out, train_per_class=2, val_per_class=0, classes=["Bright scratch", "Punching", "Rolled in scale"],
             progress=False)
    return out


def test_annotate_llm_fields_against_server(synthetic, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-FAKE-fields-42")
    names = sorted(p.name for p in (synthetic / "train").iterdir())
    t2 = {n: f"Description of {n}." for n in names}
    t2["rs_02.jpg"] = ""                                                   # no T2: geometric values stay
    (tmp_path / "t2.json").write_text(json.dumps(t2))
    answers = {
        "bs_01.jpg": '```json\n{"Shape": "Curved", "Direction": "Diagonal", "Spatial Distribution": "clustered"}\n```',
        "bs_02.jpg": "Shape: spot_like,\nDirection: no clear direction\nSpatial Distribution: scattered",
        "pu_01.jpg": "FAIL",
    }

    def answer(req):
        assert req.image_sha256 is None and req.authorization == "Bearer sk-test-FAKE-fields-42"
        name = re.search(r"description: Description of (\S+)\.$", req.prompt).group(1)
        text = answers.get(name, '{"Shape": "diffuse", "Direction": "none", "Spatial Distribution": "scattered"}')
        return (500, "scripted error") if text == "FAIL" else (200, text)

    out = tmp_path / "train-text.json"
    with ChatServer(answer) as server:
        report = data_main(["annotate", "--image_dir", str(synthetic / "train"), "--mask_dir",
                            str(synthetic / "train_mask"), "--descriptions", str(tmp_path / "t2.json"), "--output",
                            str(out), "--llm_fields", "--api_base", server.url, "--model", "m", "--quiet",
                            "--max_retries", "1", "--retry_backoff", "0.01"])
        sent = server.requests[0].body
        assert (sent["temperature"], sent["max_tokens"], "top_p" in sent) == (0.2, 120, False)
        counts = {re.search(r"of (\S+)\.$", r.prompt).group(1): int(re.search(r"component_count: (\d+)", r.prompt)
                                                                   .group(1)) for r in server.requests}
    records = {r["image_name"]: r for r in json.loads(out.read_text())}
    geometric = {r["image_name"]: r for r in json.loads((tmp_path / "train-text.geometric.json").read_text())}
    assert len(records) == len(geometric) == 6
    assert report["asked"] == 5 and report["read"] == 4 and report["no_description"] == 1
    assert len(report["failures"]) == 1 and report["failures"][0].startswith("pu_01.jpg: HTTP 500")
    for name, rec in records.items():
        t3, geo = rec["structured_attributes"], geometric[name]["structured_attributes"]
        count = engine.compute_statistics(synthetic / "train" / name, synthetic / "train_mask" / name.replace(
            ".jpg", ".png"))["component_count"]
        if name in counts:
            assert counts[name] == count
        assert rec["template_sentence"] == render_t4(t3)
        assert {k: v for k, v in t3.items() if k not in F.ALLOWED} == {k: v for k, v in geo.items()
                                                                         if k not in F.ALLOWED}
        if name in ("rs_02.jpg", "pu_01.jpg"):                             # no T2 / failed: geometric values
            assert t3 == geo
            continue
        want = {"bs_01.jpg": ("curved", "diagonal", "clustered"), "bs_02.jpg": ("spot-like", "none", "scattered")}
        shape, direction, spatial = want.get(name, ("diffuse", "none", "scattered"))
        assert (t3["Shape"], t3["Direction"]) == (shape, direction)
        assert t3["Spatial Distribution"] == ("isolated" if count == 1 else spatial)
    side = json.loads((tmp_path / "train-text.llm_fields.json").read_text())
    assert side["agreement"]["classes"]["Bright scratch"]["n"] == 2
    # Punching: only pu_02 was read (pu_01 failed); the model said "diffuse"
    assert side["agreement"]["classes"]["Punching"]["Shape"]["agree"] == float(
        geometric["pu_02.jpg"]["structured_attributes"]["Shape"] == "diffuse")
    assert "| Punching | 1 |" in (tmp_path / "train-text.agreement.md").read_text()
    printed = capsys.readouterr().out
    assert "failed: pu_01.jpg" in printed and "| class | n | Shape |" in printed
    assert not any(b"sk-test-FAKE-fields-42" in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())


def test_llm_fields_needs_descriptions_and_excludes_fallback_fields(synthetic, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_BASE", raising=False)
    base = ["annotate", "--image_dir", str(synthetic / "train"), "--mask_dir", str(synthetic / "train_mask"),
            "--output", str(tmp_path / "x.json"), "--llm_fields", "--api_base", "http://127.0.0.1:9/v1",
            "--model", "m", "--quiet"]
    with pytest.raises(ValueError, match="no record with a mask has a description"):
        data_main(base)
    with pytest.raises(ValueError, match="give one of them"):
        data_main([*base, "--fallback_fields"])
    with pytest.raises(ValueError, match="needs --api_base"):
        data_main([a for a in base if a not in ("--api_base", "http://127.0.0.1:9/v1")])
