"""sdx: the shared code behind SteelDefectX's entry points (one module per concern).

=================  ==========================================================================
module             what lives there
=================  ==========================================================================
sdx.data.levels           the 25 classes, text levels T0-T4, aliases, prompts, the T4 template
sdx.annotate.engine     the annotation engine: T3 fields and T4 from an image and its mask
sdx.data.synthetic      the embedded synthetic steel-defect generator (demo and test data)
sdx.data.layout         the official raw layout: locating it (local / Hub), reading and checking every raw file
sdx.data.builder        the `datasets` builder: splits, text levels and fallbacks, cache, load / export / push
sdx.models         model construction (Hub id, local dir or size preset), LoRA, CLIP loading and encoding
sdx.train.losses         contrastive losses (symmetric and class-aware InfoNCE, cross-rank gather)
sdx.train.loop       the one accelerate training loop and flag set shared by both trainers
sdx.train.vit   the vision-only job run by train_vit.py (data, augmentation, metrics, outputs)
sdx.train.clip  the CLIP job run by train_clip.py (caption levels, methods, zero-shot validation)
sdx.metrics        accuracy, mAcc, macro-F1, retrieval recall, pixel AUROC / F1-max / IoU
sdx.bench.tasks          the benchmark tasks and eval_benchmark.py's runner (embedding cache, protocols)
sdx.report.markdown         results.json, report.md, plots, and the data gallery
sdx.pipeline       the main job: data -> tiny ViT + tiny CLIP -> benchmark -> report
=================  ==========================================================================
"""

__version__ = "0.1.0"
