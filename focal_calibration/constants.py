"""The package's tuning constants, in one place: how big a chunk of work is, and where a fast path starts.

None of them changes a result beyond float rounding; each was chosen by a measurement named beside it. Modules read
them at call time (``constants.NAME``), so a test can shrink one to exercise the chunked code on small inputs.
"""

__all__ = ["SMALL_BATCH_ELEMENTS", "SMOOTHED_FOCAL_CHUNK_ELEMENTS", "METRICS_CHUNK_ELEMENTS",
           "METRICS_CPU_CHUNK_ELEMENTS",
           "BOOTSTRAP_CHUNK_ELEMENTS", "BOOTSTRAP_PROB_CHUNK_ELEMENTS", "CPU_CACHE_BLOCK_ELEMENTS",
           "METRICS_CPU_FAST_PATH", "SOFT_TARGET_CHUNK_ELEMENTS", "UNSCHEDULED_LOSS_WARNING_CALLS",
           "LINEAR_CHUNK_ELEMENTS", "LINEAR_MIN_ROWS",
           "MATRIX_SCALING_MODES"]

# --- losses
# Logits (N·K) up to which focal_loss takes the small-batch path, where a call costs what its ~20 small ops cost rather
# than its N·K arithmetic: the largest N·K = 2^p at which that path was at least as fast as the fused one for K = 10,
# 100 and 1000 and every smaller 2^p (benchmarks/focal_loss.py --crossover --threads 1; docs, Benchmarks).
SMALL_BATCH_ELEMENTS = 2 ** 16
# Rows per chunk of the label-smoothed focal loss = this / K: its per-class temporaries stay a few MB.
SMOOTHED_FOCAL_CHUNK_ELEMENTS = 2 ** 20
# Logits per chunk of the soft-target (probability-target / label-smoothed) losses of the nn.CrossEntropyLoss contract:
# their per-class temporaries (s, the terms, c) stay a few MB.
SOFT_TARGET_CHUNK_ELEMENTS = 2 ** 18
# Forward calls after which an epoch-scheduled (FLSc) or validation-driven (AdaFocal) loss that was never given an
# epoch (set_epoch) or a validation (observe_validation) warns once: ~2.5 epochs of CIFAR-10 at batch 128 (391 steps
# an epoch), well past the first epoch's end, where a training loop that drives the loss has made the call.
UNSCHEDULED_LOSS_WARNING_CALLS = 1000
# Logits (rows x classes) per chunk of the focal loss from features (losses/linear.py): rows = this / V, 262 at
# V = 32000 (32 MiB in fp32). On the CPU (benchmarks/fused_linear.py, d = 1024, V = 32000) fwd+bwd took 1.21x
# F.cross_entropy's time at 64 rows, 1.07x at 128 and 0.94-0.99x from 256 to 2048 rows, whose memory grows with them.
LINEAR_CHUNK_ELEMENTS = 2 ** 23
# Fewest rows per chunk of that loss; a vocabulary so large that fewer would fit is cut into blocks of classes instead
# (each block's logits are then computed twice: once for the softmax's normaliser, once for the gradient).
LINEAR_MIN_ROWS = 64

# --- calibration
# Scores per row chunk of the metrics' plain path (accelerators prefer few, large kernels).
METRICS_CHUNK_ELEMENTS = 2 ** 26
# The metrics' CPU fast path: 2 MB of fp32 scores per chunk, so its scratch tensors stay in the CPU cache.
METRICS_CPU_CHUNK_ELEMENTS = 2 ** 19
# Elements of each [N, resamples-chunk] float64 array of the bootstrap (16 MiB).
BOOTSTRAP_CHUNK_ELEMENTS = 2 ** 21
# Elements of the probabilities converted to float64 at a time for the bootstrap's w @ P.
BOOTSTRAP_PROB_CHUNK_ELEMENTS = 2 ** 20
# Elements per block of the temperature and scaling fits on CPU (16 MB in fp32): a block's passes mostly hit the cache.
CPU_CACHE_BLOCK_ELEMENTS = 2 ** 22
# Whether the metrics take their CPU fast path (the same numbers, several times faster); tests and the metrics
# benchmark switch it off to run the plain, readable definition on CPU.
METRICS_CPU_FAST_PATH = True

# --- experiments
# The modes of matrix scaling in a run's final evaluation (focal_calibration.experiments.records.matrix_scaling_plan),
# here so that the trainers' parsers (which import no torch) and the records share one definition.
MATRIX_SCALING_MODES = ("auto", "plain", "odir", "off")
