"""Speed measured on this machine: the bench engines (``engines``, ``worker``, ``checks``),
the bench itself (``bench``), per-layer times (``timing``), V2's guideline experiments
(``guidelines``), latency-budget selection (``selection``) and the torchvision baselines
(``baselines``), all timed with :mod:`shufflenet.timer`; ``limits`` bounds the runs, threads and
batch sizes they may be asked for. Import from the submodules."""
