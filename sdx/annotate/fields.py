"""Shape, Direction and Spatial Distribution read from T2 by a language model (``annotate --llm_fields``).

The SteelDefectX authors' step (reference section 6): one text request per record with its T2 and component
count (temperature 0.2, at most 120 tokens, JSON answer); the answer is parsed (code fences stripped, else
"key: value" lines), each value canonicalised to its allowed set with the authors' fallbacks, and one component
forces "isolated". The geometric values stay beside the model's (``<stem>.geometric.json``), and an agreement
table per class shows where the geometry rules and the model differ. Specification: docs/annotation_llm.md.
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import re
from pathlib import Path
from typing import Any

from sdx.annotate import engine, folder, geometry
from sdx.annotate.llm import ChatClient, add_endpoint_args, endpoint_from_args, run_items, write_json_atomic
from sdx.data.levels import DIRECTIONS, DISTRIBUTIONS, SHAPES, render_t4

__all__ = ["ALLOWED", "FALLBACKS", "SETTINGS", "agreement", "canonicalize", "field_prompt", "format_agreement",
           "parse_answer", "read_fields", "read_fields_for_records", "strip_fences"]

SETTINGS = {"temperature": 0.2, "max_tokens": 120}   # the authors' values
ALLOWED = {"Shape": SHAPES, "Direction": DIRECTIONS, "Spatial Distribution": DISTRIBUTIONS}
FALLBACKS = {"Shape": geometry.FALLBACK_SHAPE, "Direction": geometry.FALLBACK_DIRECTION,
             "Spatial Distribution": geometry.FALLBACK_DISTRIBUTION}


def field_prompt(description: str, component_count: int) -> str:
    """Our wording of the authors' request: the allowed values, the rules, the count and the description."""
    values = "\n".join(f"{field}: {', '.join(sorted(allowed))}" for field, allowed in ALLOWED.items())
    return ("You read the description of one steel surface defect and name three of its visual attributes.\n\n"
            f"Allowed values:\n{values}\n\n"
            "Rules:\n"
            "- Use only the allowed values.\n"
            '- Answer with JSON only, with the keys "Shape", "Direction" and "Spatial Distribution".\n'
            "- If the description shows no clear direction, Direction is none.\n"
            "- If component_count is 1, Spatial Distribution is isolated.\n\n"
            f"component_count: {component_count}\n"
            f"description: {description}")


def strip_fences(text: str) -> str:
    """The answer without a surrounding Markdown code fence (```json ... ```)."""
    cleaned = text.strip()
    if cleaned.startswith("```"):
        cleaned = re.sub(r"^```(?:json)?\s*", "", cleaned)
        cleaned = re.sub(r"\s*```$", "", cleaned)
    return cleaned.strip()


def parse_answer(text: str) -> dict[str, str]:
    """{key: value} from a JSON object (values as Python's str), else from "key: value" lines (commas stripped)."""
    cleaned = strip_fences(text)
    try:
        payload = json.loads(cleaned)
    except json.JSONDecodeError:
        payload = None
    if isinstance(payload, dict):
        return {str(k): str(v) for k, v in payload.items()}
    pairs: dict[str, str] = {}
    for line in cleaned.splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            pairs[key.strip()] = value.strip().strip(",")
    return pairs


def canonicalize(value: str, allowed: tuple[str, ...], fallback: str) -> str:
    """Lower-case, "_" to "-"; an exact allowed value, else the first allowed value (sorted) contained in it,
    else ``fallback``."""
    normalized = value.lower().strip().replace("_", "-")
    if normalized in allowed:
        return normalized
    return next((c for c in sorted(allowed) if c in normalized), fallback)


def read_fields(answer: str, component_count: int) -> dict[str, str]:
    """The three fields from a model answer; Spatial Distribution is "isolated" for one component."""
    parsed = parse_answer(answer)
    fields = {f: canonicalize(parsed.get(f, ""), ALLOWED[f], FALLBACKS[f]) for f in ALLOWED}
    if component_count == 1:
        fields["Spatial Distribution"] = "isolated"
    return fields


# ----------------------------------------------------------------------------------------------------------
# agreement between the geometric rules and the model
# ----------------------------------------------------------------------------------------------------------
def _field_agreement(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Observed agreement and the agreement expected by chance from the two marginals (the trivial baseline)."""
    n = len(pairs)
    geo = collections.Counter(g for g, _ in pairs)
    llm = collections.Counter(m for _, m in pairs)
    chance = sum(geo[k] * llm[k] for k in geo) / (n * n)
    return {"agree": sum(g == m for g, m in pairs) / n, "chance": chance}


def agreement(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per class and over all rows ({class_name, geometric, model}): agreement and chance per field; over all
    rows also Cohen's kappa and the most frequent disagreements (geometric -> model)."""
    from sklearn.metrics import cohen_kappa_score

    by_class: dict[str, list[dict]] = collections.defaultdict(list)
    for row in rows:
        by_class[row["class_name"]].append(row)
    table: dict[str, Any] = {"classes": {}, "all": {"n": len(rows)}}
    for cls in sorted(by_class):
        group = by_class[cls]
        table["classes"][cls] = {"n": len(group), **{f: _field_agreement(
            [(r["geometric"][f], r["model"][f]) for r in group]) for f in ALLOWED}}
    for f in ALLOWED if rows else ():
        pairs = [(r["geometric"][f], r["model"][f]) for r in rows]
        entry = _field_agreement(pairs)
        entry["kappa"] = None if entry["chance"] >= 1 else float(cohen_kappa_score(*zip(*pairs)))
        misses = collections.Counter((g, m) for g, m in pairs if g != m).most_common(5)
        entry["disagreements"] = [[g, m, c] for (g, m), c in misses]
        table["all"][f] = entry
    return table


def format_agreement(table: dict[str, Any]) -> str:
    """The agreement table in Markdown: per class, agreement % with the chance level beside it."""
    def cell(e: dict) -> str:
        return f"{100 * e['agree']:.0f}% (chance {100 * e['chance']:.0f}%)"

    lines = ["| class | n | " + " | ".join(ALLOWED) + " |", "|---|---:|" + "---|" * len(ALLOWED)]
    for cls, e in table["classes"].items():
        lines.append(f"| {cls} | {e['n']} | " + " | ".join(cell(e[f]) for f in ALLOWED) + " |")
    if table["all"]["n"]:
        lines.append(f"| **all** | {table['all']['n']} | " + " | ".join(cell(table["all"][f]) for f in ALLOWED) + " |")
        lines.append("")
        for f in ALLOWED:
            e = table["all"][f]
            kappa = "undefined (one value only)" if e["kappa"] is None else f"{e['kappa']:.2f}"
            misses = ", ".join(f"{g} -> {m} ({c})" for g, m, c in e["disagreements"]) or "none"
            lines.append(f"- {f}: Cohen's kappa {kappa}; most frequent disagreements (geometric -> model): {misses}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# records and the command line
# ----------------------------------------------------------------------------------------------------------
def _with_model_fields(records: list[dict], results: dict[int, dict], todo: list[int]) -> list[dict]:
    """Copies of ``records`` where each record read by the model carries its three fields and a new T4."""
    out = copy.deepcopy(records)
    for k, i in enumerate(todo):
        if k in results:
            out[i]["structured_attributes"].update(results[k]["fields"])
            out[i]["template_sentence"] = render_t4(out[i]["structured_attributes"])
    return out


def read_fields_for_records(records: list[dict], paths: dict[str, tuple[Path, Path]], client: ChatClient, *,
                            output: Path, resize_mask: bool = False, checkpoint_every: int = 50,
                            quiet: bool = False) -> tuple[list[dict], dict[str, Any]]:
    """(records with the model's three fields, report) for records that have T3 and a non-empty T2.

    The component count of each record is recomputed from its image and mask (``paths``: name -> (image,
    mask)). A record whose request fails keeps its geometric values and is named in the report.
    """
    todo = [i for i, r in enumerate(records)
            if r.get("structured_attributes") and (r.get("natural_language_description") or "").strip()]

    def work(i: int) -> dict[str, Any]:
        rec = records[i]
        image, mask = paths[rec["image_name"]]
        count = engine.compute_statistics(image, mask, resize_mask=resize_mask)["component_count"]
        answer = client.ask(field_prompt(rec["natural_language_description"], count), SETTINGS)
        return {"component_count": count, "answer": answer, "fields": read_fields(answer, count)}

    partial = output.with_name(f"{output.stem}.partial.json")
    results, failures = run_items(
        todo, work, names=[records[i]["image_name"] for i in todo], concurrency=client.endpoint.concurrency,
        client=client, desc="llm fields", quiet=quiet, checkpoint_every=checkpoint_every,
        checkpoint=lambda res, _f: write_json_atomic(partial, _with_model_fields(records, res, todo)))
    out = _with_model_fields(records, results, todo)
    rows = [{"image_name": records[i]["image_name"], "class_name": records[i]["class_name"],
             "component_count": results[k]["component_count"], "answer": results[k]["answer"],
             "model": results[k]["fields"],
             "geometric": {f: records[i]["structured_attributes"][f] for f in ALLOWED}}
            for k, i in enumerate(todo) if k in results]
    with_t3 = sum(1 for r in records if r.get("structured_attributes"))
    report = {"records": len(records), "asked": len(todo), "read": len(rows), "failed": len(failures),
              "failures": [failures[k] for k in sorted(failures)], "no_description": with_t3 - len(todo),
              "no_attributes": len(records) - with_t3, **client.counts, "endpoint": client.endpoint.public(),
              "settings": SETTINGS, "agreement": agreement(rows), "rows": rows}
    assert report["asked"] == report["read"] + report["failed"]
    partial.unlink(missing_ok=True)
    return out, report


def geometric_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}.geometric.json")


def annotate_llm_main(args: argparse.Namespace) -> dict:
    """``annotate --llm_fields``: the geometric records first (``<stem>.geometric.json``), then the three
    fields read from T2 by the endpoint into ``--output``; report ``<stem>.llm_fields.json``, table
    ``<stem>.agreement.md``."""
    if args.fallback_fields:
        raise ValueError("--llm_fields and --fallback_fields both set Shape, Direction and Spatial Distribution: "
                         "give one of them")
    endpoint = endpoint_from_args(args)
    output = Path(args.output)
    folder.annotate_main(argparse.Namespace(**{**vars(args), "output": str(geometric_path(output)),
                                               "llm_fields": False}))
    records = json.loads(geometric_path(output).read_text(encoding="utf-8"))
    if not any((r.get("natural_language_description") or "").strip() for r in records
               if r.get("structured_attributes")):
        raise ValueError("--llm_fields reads the fields from T2, but no record with a mask has a description: "
                         "pass --descriptions (e.g. the output of describe)")
    labels = folder.read_labels_csv(args.labels) if args.labels else None
    items, _ = folder.scan_folder(Path(args.image_dir), Path(args.mask_dir), labels)
    paths = {it["name"]: (it["image"], it["mask"]) for it in items}
    out, report = read_fields_for_records(records, paths, ChatClient(endpoint), output=output,
                                          resize_mask=args.resize_mask, checkpoint_every=args.checkpoint_every,
                                          quiet=args.quiet)
    write_json_atomic(output, out)
    stem = output.with_name(output.stem)
    write_json_atomic(f"{stem}.llm_fields.json", report)
    table = format_agreement(report["agreement"])
    Path(f"{stem}.agreement.md").write_text(
        "# Geometric rules vs model-read fields (agreement per class)\n\n" + table + "\n", encoding="utf-8")
    print(f"wrote {len(out)} records to {output}: fields read by the model for {report['read']} of "
          f"{report['asked']} records with T3 and T2 ({report['failed']} failed, {report['no_description']} without "
          f"T2 and {report['no_attributes']} without T3 keep the geometric values); {report['requests']} requests, "
          f"{report['cache_hits']} cache hits")
    for line in report["failures"][:10]:
        print(f"  failed: {line}")
    print(table)
    return report


def add_llm_field_args(parser: argparse.ArgumentParser) -> None:
    """The ``--llm_fields`` flag and the endpoint flags, added to the ``annotate`` parser."""
    parser.add_argument("--llm_fields", action="store_true",
                        help="read Shape, Direction and Spatial Distribution from T2 (--descriptions) with the "
                             "endpoint, as the authors did; the geometric records go to <stem>.geometric.json "
                             "and an agreement table per class to <stem>.agreement.md")
    add_endpoint_args(parser, title="with --llm_fields: language-model endpoint")
