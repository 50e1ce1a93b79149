"""The tuner behind ``flashseq-tune`` (installed as ``flashseq.autotune``).

``cli`` (the command), ``workloads`` (ops and shape presets), ``candidates`` (the solver models'
best K configurations), ``targets`` (CPU loop knobs / Triton tiles, how to run and check one),
``timing`` (warm-up, steady medians, paired ratios, L2 flush on GPU), ``runner`` (the loop),
``cache`` (the writing side of the per-device JSON cache that ``flashseq.tuning`` reads) and
``verify`` (dispatch with the cache against ``FLASHSEQ_TUNING=off``).
"""
