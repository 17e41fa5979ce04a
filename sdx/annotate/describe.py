"""T2 descriptions for a folder of images: the authors' candidate selection against any OpenAI-compatible
vision endpoint, or a geometric describer that needs no model (``describe --no_model``).

With a model, each image gets N sampled candidates; up to three mutually diverse ones are kept (cosine
similarity below 0.9), scored 0.6 x coverage of five dimensions + 0.4 x diversity, and when none covers four
dimensions the answers to six single questions join as an extra candidate. Complete sentences rank first; the
top candidate is T2. Without a model, T2 is a sentence built from the mask and image statistics of the
annotation engine. Output: records in the official schema (T2 only) that ``annotate --descriptions`` reads,
and a run report. Specification: docs/annotation_llm.md.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from sdx.annotate.engine import analyze
from sdx.annotate.folder import add_folder_arguments, read_labels_csv, scan_folder
from sdx.annotate.images import load_pair
from sdx.annotate.llm import ChatClient, add_endpoint_args, endpoint_from_args, run_items, write_json_atomic
from sdx.annotate.phrases import count_phrase, fix_articles, orientation_phrase, position_phrase, size_adjective, tone

__all__ = [
    "DEFAULT_PROMPT",
    "DEFAULT_QUESTIONS",
    "DIMENSION_KEYWORDS",
    "DescribeSettings",
    "SentenceTransformerSimilarity",
    "TfidfSimilarity",
    "covered_dimensions",
    "describe_folder",
    "geometric_description",
    "is_complete",
    "make_similarity",
    "rank",
    "register_cli",
    "score",
    "select_description",
    "select_diverse",
]

# The authors' selection rule (reference section 6).
DIMENSIONS = ("shape", "size", "depth", "position", "contrast")
DIMENSION_KEYWORDS = {
    "shape": ("shape", "round", "irregular", "linear", "circular"),
    "size": ("small", "large", "span", "covers", "extends"),
    "depth": ("shallow", "deep", "surface-level", "indented", "raised"),
    "position": ("top", "bottom", "left", "right", "center", "corner"),
    "contrast": ("contrast", "noticeable", "faint", "sharp", "blend"),
}
SIMILARITY_THRESHOLD = 0.9
KEEP = 3
COVERAGE_WEIGHT, DIVERSITY_WEIGHT = 0.6, 0.4
MIN_DIMENSIONS = 4
FALLBACK_SIMILARITY = 0.5

DEFAULT_PROMPT = (
    "Describe the defect on this steel surface in a few short, clear sentences. Say what it looks like, its "
    "shape, its size compared with the image, whether it looks shallow or deep, where it lies in the image, and "
    "how strongly it contrasts with the surrounding surface. Describe only what is visible: no guesses about "
    "causes and no vague words.")
DEFAULT_QUESTIONS = (
    "What does the defect on this steel surface look like?",
    "What shape is the defect?",
    "How large is the defect compared with the whole image?",
    "Does the defect look shallow or deep?",
    "Where in the image is the defect?",
    "How strongly does the defect contrast with the surrounding surface?",
)
MIME = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}


# ----------------------------------------------------------------------------------------------------------
# candidate selection (pure functions: similarity matrices in, ranked candidates out)
# ----------------------------------------------------------------------------------------------------------
def covered_dimensions(text: str) -> list[str]:
    """The dimensions with a keyword in ``text`` (lower-cased substring match)."""
    lowered = text.lower()
    return [d for d in DIMENSIONS if any(k in lowered for k in DIMENSION_KEYWORDS[d])]


def is_complete(text: str) -> bool:
    """A sentence is complete when it ends in . ! or ? (after stripping white space)."""
    return bool(re.search(r"[.!?]$", text.strip()))


def select_diverse(similarity: np.ndarray, threshold: float = SIMILARITY_THRESHOLD, keep: int = KEEP) -> list[int]:
    """Indices kept: the first, then each next one whose highest similarity to those kept is below threshold."""
    kept = [0]
    for i in range(1, len(similarity)):
        if len(kept) >= keep:
            break
        if max(similarity[i][j] for j in kept) < threshold:
            kept.append(i)
    return kept


def score(n_dimensions: int, similarity: float) -> float:
    return round(COVERAGE_WEIGHT * n_dimensions / len(DIMENSIONS) + DIVERSITY_WEIGHT * (1 - similarity), 4)


def _candidate(text: str, similarity: float, source: str) -> dict[str, Any]:
    dims = covered_dimensions(text)
    return {"text": text, "dimensions": dims, "similarity": round(float(similarity), 4),
            "score": score(len(dims), float(similarity)), "complete": is_complete(text), "source": source}


def rank(candidates: Sequence[dict]) -> list[dict]:
    """Complete sentences first, then by score descending (stable: ties keep their order)."""
    return sorted(candidates, key=lambda c: (not c["complete"], -c["score"]))


def select_description(texts: Sequence[str], similarity: Callable[[Sequence[str]], np.ndarray],
                       ask_questions: Callable[[], str] | None = None) -> dict[str, Any]:
    """The authors' selection over one image's sampled ``texts``.

    ``similarity(texts)`` gives the pairwise cosine matrix; a kept candidate's similarity is its mean over
    the other kept ones (0 when it is alone). When no kept candidate covers MIN_DIMENSIONS dimensions,
    ``ask_questions()`` gives the joined six answers, added with similarity FALLBACK_SIMILARITY.
    """
    sim = np.asarray(similarity(list(texts)), dtype=np.float64)
    kept = select_diverse(sim)
    pool = [_candidate(texts[i], sum(sim[i][j] for j in kept if j != i) / max(1, len(kept) - 1), "sampled")
            for i in kept]
    ranked = rank(pool)
    fallback = ask_questions is not None and all(len(c["dimensions"]) < MIN_DIMENSIONS for c in ranked)
    if fallback:
        ranked = rank(ranked + [_candidate(ask_questions(), FALLBACK_SIMILARITY, "six questions")])
    if not ranked[0]["text"].strip():
        raise ValueError("the endpoint answered with empty text only")
    return {"description": ranked[0]["text"], "candidates": ranked, "fallback": fallback, "sampled": len(texts),
            "kept": len(kept)}


class TfidfSimilarity:
    """Cosine similarity of scikit-learn TF-IDF vectors (TfidfVectorizer defaults) fitted on one image's
    candidates: the stated stand-in when no sentence-embedding model is given."""

    def __init__(self) -> None:
        self.description = {"kind": "tfidf", "detail": "scikit-learn TfidfVectorizer (defaults) fitted on the "
                                                       "candidates of each image; cosine similarity"}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.metrics.pairwise import cosine_similarity
        try:
            vectors = TfidfVectorizer().fit_transform(texts)
        except ValueError:  # not one word in any candidate: no similarity either
            return np.zeros((len(texts), len(texts)))
        return cosine_similarity(vectors)


class SentenceTransformerSimilarity:
    """Cosine similarity of a sentence-transformers model from a local folder (as the authors used)."""

    def __init__(self, folder: str):
        try:  # optional and heavy (torch): imported only when --embedding_model is given
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ValueError("--embedding_model needs the sentence-transformers package (pip install "
                             "sentence-transformers); without --embedding_model describe uses TF-IDF cosine") from None
        if not Path(folder).is_dir():
            raise ValueError(f"embedding model folder not found: {folder}")
        self.model = SentenceTransformer(str(folder))
        self.description = {"kind": "sentence-transformers", "detail": str(Path(folder).resolve())}
        self._lock = threading.Lock()   # one encode at a time: the model is shared by the worker threads

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            emb = np.asarray(self.model.encode(list(texts), normalize_embeddings=True), dtype=np.float64)
        return emb @ emb.T


def make_similarity(embedding_model: str | None):
    return SentenceTransformerSimilarity(embedding_model) if embedding_model else TfidfSimilarity()


# ----------------------------------------------------------------------------------------------------------
# one image
# ----------------------------------------------------------------------------------------------------------
@dataclass
class DescribeSettings:
    """What is asked per image (the defaults are the authors' sampling settings; the prompts are ours)."""

    num_candidates: int = 4
    temperature: float = 0.9
    top_p: float = 0.9
    max_tokens: int = 80
    prompt: str = DEFAULT_PROMPT
    questions: tuple[str, ...] = DEFAULT_QUESTIONS
    checkpoint_every: int = 50

    def sampling(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens}


def image_payload(path: Path) -> tuple[bytes, str]:
    """(bytes, MIME type) sent for an image: JPEG and PNG files as they are, other formats re-encoded as PNG."""
    try:
        data = path.read_bytes()
        if path.suffix.lower() in MIME:
            return data, MIME[path.suffix.lower()]
        with Image.open(io.BytesIO(data)) as img:
            buf = io.BytesIO()
            img.save(buf, format="PNG")
        return buf.getvalue(), "image/png"
    except (OSError, UnidentifiedImageError) as exc:
        raise ValueError(f"cannot read image file {path}: {exc}") from exc


def describe_with_model(client: ChatClient, path: Path, settings: DescribeSettings,
                        similarity: Callable[[Sequence[str]], np.ndarray]) -> dict[str, Any]:
    image, mime = image_payload(path)
    sampling = settings.sampling()
    texts = [client.ask(settings.prompt, sampling, image=image, mime=mime, sample=i)
             for i in range(settings.num_candidates)]

    def ask_questions() -> str:
        return " ".join(client.ask(q, sampling, image=image, mime=mime) for q in settings.questions)

    return select_description(texts, similarity, ask_questions)


# Noun for each Shape; the collective shapes describe all pieces together.
SHAPE_NOUNS = {
    "linear": ("line", "lines"), "curved": ("curved line", "curved lines"),
    "elongated": ("elongated mark", "elongated marks"), "circular": ("round spot", "round spots"),
    "irregular": ("irregular patch", "irregular patches"), "spot-like": ("spot", "spots"),
    "patch-like": ("patch", "patches"), "unclear": ("region", "regions"),
}
COLLECTIVE_NOUNS = {"fragmented": "fragmented area", "network-like": "network-like pattern",
                    "diffuse": "diffuse area"}


def geometric_description(image: Any, mask: Any, class_name: str, *, resize_mask: bool = False) -> str:
    """A T2-style sentence from the mask and image statistics (no model): count, size, shape, direction,
    tone and position, with the annotation engine's measurements; word choices seeded by the image content."""
    gray, m = load_pair(image, mask, resize_mask=resize_mask)
    res = analyze(gray, m, class_name)
    stats, attrs = res["statistics"], res["attributes"]
    cls, count = class_name.lower(), stats["component_count"]
    if count == 0:
        return f"No defect region is marked in the mask of this {cls} image."
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(gray.tobytes()).digest()[:8], "little"))
    size = size_adjective(stats["scale_ratio"])   # of the whole mask: said of one region only
    if attrs["Shape"] in COLLECTIVE_NOUNS:
        what = f"a {size} {COLLECTIVE_NOUNS[attrs['Shape']]}" + (f" in {count} pieces" if count > 1 else "")
    elif count == 1:
        what = f"{count_phrase(rng, count)} {size} {SHAPE_NOUNS[attrs['Shape']][0]}"
    else:
        what = f"{count_phrase(rng, count)} {SHAPE_NOUNS[attrs['Shape']][1]}"
    adv, comparison = tone(stats["polarity_diff"])
    parts = [f"The {cls} defect appears as {what}", orientation_phrase(rng, attrs["Direction"], False),
             f"{adv} {comparison} than the surrounding steel" if adv else "similar in tone to the surrounding steel",
             f"covering about {max(1, round(100 * stats['scale_ratio']))}% of the image",
             position_phrase(rng, attrs["Position"])]
    return fix_articles(", ".join(p for p in parts if p) + ".")


# ----------------------------------------------------------------------------------------------------------
# a folder
# ----------------------------------------------------------------------------------------------------------
def report_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(f"{output.stem}.report.json")


def partial_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(f"{output.stem}.partial.json")


def _records(items: Sequence[dict], results: dict[int, dict]) -> list[dict]:
    """Records in the official schema (T2 only), in folder order, for the images described."""
    return [{"image_name": it["name"], "class_name": it["class_name"],
             "natural_language_description": results[i]["description"], "structured_attributes": None,
             "template_sentence": ""} for i, it in enumerate(items) if i in results]


def _geometric_job(item: dict, resize_mask: bool) -> dict[str, Any]:
    if item["mask"] is None:
        raise ValueError(f"no mask for image {item['image']}")
    text = geometric_description(item["image"], item["mask"], item["class_name"], resize_mask=resize_mask)
    return {"description": text, "empty_mask": text.startswith("No defect region")}


def describe_folder(image_dir: str | Path, output: str | Path, *, mask_dir: str | Path | None = None,
                    labels: str | Path | None = None, endpoint=None, settings: DescribeSettings | None = None,
                    embedding_model: str | None = None, resize_mask: bool = False, quiet: bool = False) -> dict:
    """Describe every image of a folder (labels as ``annotate``: CSV, class sub-folders or file prefixes).

    ``endpoint`` (an :class:`sdx.annotate.llm.Endpoint`) asks the model; ``endpoint=None`` uses the geometric
    describer, which needs ``mask_dir``. Writes ``output`` (records, T2 only) atomically at the end,
    ``<stem>.partial.json`` every ``settings.checkpoint_every`` images, and ``<stem>.report.json`` (settings,
    counts, failures by name, per-image candidates). Images in = records out + failures.
    """
    settings = settings or DescribeSettings()
    output = Path(output)
    if endpoint is None and mask_dir is None:
        raise ValueError("describe --no_model needs --mask_dir (the sentences come from the masks)")
    items, mode = scan_folder(Path(image_dir), Path(mask_dir) if endpoint is None else None,
                               read_labels_csv(labels) if labels else None)
    names = [it["name"] for it in items]
    client = similarity = None
    if endpoint is None:
        describer: dict[str, Any] = {"kind": "geometric", "detail": "sentences from the mask and image statistics "
                                                                    "(no model)"}
        work = lambda it: _geometric_job(it, resize_mask)
    else:
        client, similarity = ChatClient(endpoint), make_similarity(embedding_model)
        describer = {"kind": "model", "endpoint": endpoint.public(), "settings": asdict(settings),
                     "embedding": similarity.description}
        work = lambda it: describe_with_model(client, it["image"], settings, similarity)
    results, failures = run_items(
        items, work, names=names, concurrency=endpoint.concurrency if endpoint else 1, client=client,
        desc="describe", quiet=quiet, checkpoint_every=settings.checkpoint_every,
        checkpoint=lambda res, _fail: write_json_atomic(partial_path(output), _records(items, res)))
    records = _records(items, results)
    write_json_atomic(output, records)
    summary = {
        "output": str(output), "report": str(report_path(output)), "labels_from": mode, "images": len(items),
        "described": len(records), "failed": len(failures), "failures": [failures[i] for i in sorted(failures)],
        "fallback_used": sum(1 for r in results.values() if r.get("fallback")),
        "empty_masks": sum(1 for r in results.values() if r.get("empty_mask")),
        **(client.counts if client else {}), "describer": describer,
    }
    assert summary["images"] == summary["described"] + summary["failed"]
    details = {names[i]: {k: v for k, v in r.items() if k != "description"} for i, r in sorted(results.items())}
    write_json_atomic(report_path(output), {**summary, "images_detail": details})
    partial_path(output).unlink(missing_ok=True)
    return summary


def _read_prompt(path: str | None, default: str) -> str:
    if not path:
        return default
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read prompt file {path}: {exc}") from exc
    if not text:
        raise ValueError(f"prompt file {path} is empty")
    return text


def describe_main(args: argparse.Namespace) -> dict:
    questions = DEFAULT_QUESTIONS
    if args.questions_file:
        questions = tuple(q.strip() for q in _read_prompt(args.questions_file, "").splitlines() if q.strip())
    settings = DescribeSettings(num_candidates=args.num_candidates, temperature=args.temperature,
                                top_p=args.top_p, max_tokens=args.max_tokens,
                                prompt=_read_prompt(args.prompt_file, DEFAULT_PROMPT), questions=questions,
                                checkpoint_every=args.checkpoint_every)
    if settings.num_candidates < 1:
        raise ValueError("--num_candidates must be >= 1")
    endpoint = None if args.no_model else endpoint_from_args(args)
    summary = describe_folder(args.image_dir, args.output, mask_dir=args.mask_dir, labels=args.labels,
                              endpoint=endpoint, settings=settings, embedding_model=args.embedding_model,
                              resize_mask=args.resize_mask, quiet=args.quiet)
    how = summary["describer"]["kind"]
    extra = (f"; {summary['requests']} requests, {summary['cache_hits']} cache hits, {summary['retries']} retries, "
             f"six-question fallback on {summary['fallback_used']}" if how == "model"
             else f"; {summary['empty_masks']} with an empty mask")
    print(f"wrote {summary['described']} descriptions ({how}) to {summary['output']}: {summary['images']} images, "
          f"{summary['failed']} failed{extra}; report {summary['report']}")
    for line in summary["failures"][:10]:
        print(f"  failed: {line}")
    if summary["failed"]:
        print("  (re-run the same command to retry the failed images: cached answers are not asked again)")
    return summary


def register_cli(subparsers: Any) -> None:
    """Add the ``describe`` subcommand (func returns the summary dict)."""
    p = subparsers.add_parser(
        "describe", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="write T2 descriptions for a folder of images (OpenAI-compatible vision endpoint, or --no_model)",
        description="Per image, sample candidate descriptions from an OpenAI-compatible chat endpoint with vision "
                    "and keep the best by the SteelDefectX authors' rule (diversity filter, coverage of five "
                    "dimensions, six-question fallback); or, with --no_model, build a sentence from the mask. "
                    "Labels as for annotate (--labels CSV, class sub-folders, or file-name prefixes). Writes "
                    "records in the official schema with T2 only: pass them to annotate --descriptions. "
                    "Answers are cached: an interrupted run resumes, a re-run makes no request.")
    add_folder_arguments(p, mask_required=False, mask_help="masks <image stem>.png (used by --no_model only)")
    p.add_argument("--output", required=True, metavar="FILE.json", help="records file to write (T2 only)")
    p.add_argument("--no_model", action="store_true", help="geometric sentences from the masks; no endpoint")
    p.add_argument("--prompt_file", default=None, help="text file with the open prompt; if not given, ours (the "
                                                       "same asks as the authors')")
    p.add_argument("--questions_file", default=None,
                   help="text file with the fallback questions, one per line ; if not given, our six")
    p.add_argument("--num_candidates", type=int, default=4, help="sampled candidates per image")
    p.add_argument("--temperature", type=float, default=0.9, help="sampling temperature (the authors' value)")
    p.add_argument("--top_p", type=float, default=0.9, help="nucleus sampling (the authors' value)")
    p.add_argument("--max_tokens", type=int, default=80, help="answer length limit (the authors' value)")
    p.add_argument("--embedding_model", default=None,
                   help="sentence-transformers model folder for the diversity filter; if not given, TF-IDF cosine")
    p.add_argument("--resize_mask", action="store_true", help="resize a mask of another size to its image")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_endpoint_args(p)
    p.set_defaults(func=describe_main)
