"""The benchmark (eval_benchmark.py): ``cli`` (arguments, run, report), ``tasks`` (a run's state and task table),
one module per task (``vision`` task 1, ``txty`` task 2, ``fewshot`` + ``probe`` task 3, ``transfer`` task 4,
``retrieval``, ``localize``) and what they share (``zeroshot``, ``models``, ``data``, ``embeddings``, ``cache``).
The protocols are specified in docs/benchmark.md."""
