"""sdx: the package behind SteelDefectX's entry points; each folder and file holds one concern.

==================  ==========================================================================================
path                what lives there
==================  ==========================================================================================
sdx/data/           levels.py (classes, text levels T0-T4, aliases, fallbacks), layout.py (locating and
                    checking the raw files), streaming.py (records read one at a time, the spill file),
                    builder.py (the `datasets` builder), export.py (export / push, the raw-folder card),
                    synthetic.py (the embedded demo data generator), data_card.md (the dataset card),
                    naming.py (the --dataset_name flags, what a data name is), source.py (any `datasets`
                    dataset as builder rows, text levels counted)
sdx/annotate/       T3 / T4 from an image and its mask: engine.py (statistics, rule fields), geometry.py
                    (Shape, Direction, Spatial Distribution), images.py (input reading), folder.py (annotate /
                    verify tools); describe.py, fields.py, llm.py, phrases.py (the language-model steps)
sdx/models/         classifiers.py (image classifiers, LoRA), clip.py (CLIP load, encode, zero-shot, adapter,
                    token budget, Long-CLIP stretch), tokenizer.py (a CLIP BPE trained locally), convert.py
                    (OpenAI-layout CLIP checkpoints to transformers: convert-clip)
sdx/train/          args.py, job.py (the one trainer skeleton), loop.py, checkpoints.py, outputs.py, pixels.py,
                    losses.py, runmeta.py (the run-metadata record), vit.py, clip.py, parallel.py (trainings side
                    by side, for the main job)
sdx/bench/          tasks.py (orchestrator), vision/txty/fewshot/probe/transfer/retrieval/localize.py (one per
                    task), adapters.py (CLIP-Adapter, Tip-Adapter(-F) on cached features), zeroshot.py,
                    models.py, data.py, embeddings.py, cache.py, cli.py
sdx/report/         results.json, report.md, plots, the data gallery
sdx/metrics.py      accuracy, mAcc, macro-F1, retrieval recall, pixel AUROC / F1-max / IoU
sdx/redact.py       the secrets rule: every recorded command line and argument dump goes through it
sdx/pipeline.py     the main job: data -> ViT + CLIPs -> benchmark -> report
sdx/cli.py          the steeldefectx data tools, ``python -m sdx COMMAND`` and the console scripts
==================  ==========================================================================================

Layers (a module imports only from its own layer or below): 1 data/levels, models/, metrics, redact; 2 annotate/;
3 data/ (layout, streaming, builder, export, synthetic, naming, source); 4 report/, train/; 5 bench/; 6 pipeline, cli.
"""

__version__ = "0.2.0"
