"""Speed measured on this machine: one latency timer (``timer``), the bench engines (``engines``,
``ort_worker``), the bench itself (``bench``), per-layer times (``timing``), V2's guideline
experiments (``guidelines``), latency-budget selection (``selection``) and the torchvision
baselines (``baselines``). Import from the submodules; this package imports nothing."""
