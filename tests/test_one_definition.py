"""Each concept of the architecture has one definition, used by both trainers and the evaluator (import identity,
not text search): the text levels and their fallbacks, the CLIP encoder and zero-shot rule, the run-metadata
record."""
from __future__ import annotations

from sdx.bench import data as bench_data
from sdx.bench import models as bench_models
from sdx.bench import retrieval, transfer, txty, zeroshot
from sdx.data import builder, levels
from sdx.models import clip as clip_model
from sdx.models import prompts
from sdx.train import clip as train_clip
from sdx.train import job, runmeta
from sdx.train import vit as train_vit


def test_text_levels_and_fallbacks_are_defined_once():
    # the trainer and the builder resolve levels through the one levels module
    assert train_clip.T is levels and builder.T is levels
    # the evaluator's captions are the builder's, which read the levels module's fallback-free texts
    assert zeroshot.caption_texts is builder.caption_texts is retrieval.caption_texts is txty.caption_texts
    assert zeroshot.normalize_level is levels.normalize_level is bench_models.normalize_level
    assert zeroshot.t0_prompt is levels.t0_prompt is transfer.t0_prompt
    assert "caption_texts" in (bench_data.__doc__ or "")


def test_clip_encoder_and_zero_shot_rule_are_defined_once():
    # training-time validation and every benchmark task share the encoder functions and the zero-shot rule
    assert train_clip.zero_shot_predict is zeroshot.zero_shot_predict is transfer.zero_shot_predict \
        is clip_model.zero_shot_predict
    assert train_clip.encode_images is clip_model.encode_images
    assert train_clip.encode_texts is clip_model.encode_texts  # encode_text_list (the evaluator's) batches it
    assert bench_models.ClipEncoder is clip_model.ClipEncoder
    # class embeddings from sample-level captions (T2-T4): one function for validation and the benchmark
    assert train_clip.caption_mean_embeddings is zeroshot.caption_mean_embeddings is prompts.caption_mean_embeddings
    # the distinct captions of a column (each encoded once): validation, retrieval, caption-trained CLIP-Adapters
    assert train_clip.distinct_captions is retrieval.distinct_captions is txty.distinct_captions \
        is prompts.distinct_captions


def test_run_metadata_is_one_record_written_by_both_trainers_and_read_by_the_evaluator():
    assert job.RunMetadata is runmeta.RunMetadata is bench_models.RunMetadata is transfer.RunMetadata
    assert bench_models.RUN_META_FILE == runmeta.RUN_META_FILE
    assert train_clip.weights_origin is train_vit.weights_origin is runmeta.weights_origin
    assert issubclass(train_vit.VitJob, job.Job) and issubclass(train_clip.ClipJob, job.Job)
