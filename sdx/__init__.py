"""sdx: the shared code behind SteelDefectX's entry points (one module per concern).

=================  ==========================================================================
module             what lives there
=================  ==========================================================================
sdx.text           the 25 classes, text levels T0-T4, aliases, prompts, the T4 template
sdx.attributes     the annotation engine: T3 fields and T4 from an image and its mask
sdx.synthetic      the embedded synthetic steel-defect generator (demo and test data)
sdx.dataset        the `datasets` builder, validation of raw files, load / stats / export / push
sdx.models         model construction (Hub id, local dir or size preset) and LoRA
sdx.losses         contrastive losses (symmetric and class-aware InfoNCE, cross-rank gather)
sdx.training       the one accelerate training loop shared by train_vit.py and train_clip.py
sdx.metrics        accuracy, mAcc, macro-F1, retrieval recall, pixel AUROC / F1-max / IoU
sdx.tasks          the benchmark tasks (classification, zero/few-shot, transfer, retrieval, localization)
sdx.report         results.json, report.md and plots
sdx.pipeline       the main job: data -> tiny ViT + tiny CLIP -> benchmark -> report
=================  ==========================================================================
"""

__version__ = "0.1.0"
