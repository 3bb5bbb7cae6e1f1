"""Every threshold the diagnosis uses, in one place, with where it comes from.

Signals are compared in decades (log10) *relative* to the layers nearest the output, so a
verdict does not change when the loss is multiplied by a constant or the batch size changes.
Calibrated on the corpus in tests/corpus.py (benchmarks/diagnosis_accuracy.py prints the
result); the healthy members there set the false-alarm side of each margin.
"""

# --- vanishing / exploding (error signal dL/d(layer output), per-sample norm) -------------
# A layer's signal more than this many decades below the reference (the last layer before
# the output layer) is a vanishing gradient. Healthy corpus nets (ReLU+He to depth 30, tanh +
# Xavier to depth 10, residual BN nets to depth 50, LSTM LM, Transformer) stay within 1.5
# decades over seeds 0-4; deep sigmoid nets fall ~0.6 decades per layer (Glorot & Bengio 2010).
# Plain (non-residual) BatchNorm ReLU nets *grow* ~0.08 decades per layer at init (Yang et al.
# 2019, "A Mean Field Theory of Batch Normalization": sqrt(pi/(pi-1)) = 1.21x per layer), so
# they cross the line near depth 25 — a real, mild explosion the verdict reports.
VANISH_DECADES = 2.0
# ... this many decades above the reference: exploding (ReLU with N(0,1) weights gains
# ~0.75 decades per layer; healthy nets stay within ~1 decade).
EXPLODE_DECADES = 2.0
# Beyond this the finding is critical: the affected layers effectively do not learn (or the
# updates are 10^4 times larger than the output layer's).
CRITICAL_DECADES = 4.0
# A layer counts as "affected" (for localisation) from this many decades off the reference.
AFFECTED_DECADES = 1.0
# Per-layer gain factors (activation and weight parts) this far from 1 are named as causes.
FACTOR_LOW = 0.7
FACTOR_HIGH = 1.4
# One layer whose weights alone cut the signal 10x (or multiply it 10x) names the init as a
# cause even when the average layer is fine (a bottleneck layer with 1e-3 x its He scale).
FACTOR_ONE_LAYER_LOW = 0.1
FACTOR_ONE_LAYER_HIGH = 10.0
# chain_product_depth: the share of the total decay credited to depth itself; a specific
# factor that explains more than this share ranks above it.
DEPTH_SHARE = 0.4
# "Many per-layer factors": at least this many layers in the affected run.
DEEP_LAYERS = 4

# --- persistence during training ----------------------------------------------------------
# A symptom must hold on at least this fraction of the recorded steps (and on MIN_STEPS of
# them) to be reported; at initialisation the single recorded step is the network as built.
PERSIST_FRACTION = 0.5
MIN_STEPS = 3

# --- exploding during training ------------------------------------------------------------
# The global gradient norm growing by this many decades from the first recorded steps to the
# last is an explosion in time (typical of a too-high learning rate).
GROWTH_DECADES = 2.0
# 90th-percentile update/weight RMS ratio above this: steps far too large (Karpathy's rule of
# thumb is ~1e-3 for a healthy SGD step; 1e-1 rewrites a tenth of the weight each step).
UPDATE_RATIO_HIGH = 0.1
# ... the healthy step's ratio (that rule of thumb): treat picks the learning-rate cut that brings
# the measured ratio nearest to it (table.remedies_of).
UPDATE_RATIO_TYPICAL = 1e-3
# Weights (median layer RMS) growing by this many decades during the recorded steps: the steps
# inflate them (tanh with SGD lr 20 grows them ~20x in 50 steps; healthy runs change them by
# well under 2x).
WEIGHT_GROWTH_DECADES = 0.5
# ... and, for an explosion in time from the weights alone (Adam-type steps do not grow with
# the gradient), the loss did not fall: its last recorded values are still at least this
# fraction of its first (zoo, calibration half: ViT and DINOv2 at lr x100 end at 1.01 and 0.97;
# an LSTM LM and ALBERT at lr x100, harmless, at 0.39 and 0.81; healthy runs fall further).
LOSS_NOT_FALLING = 0.9

# Cause ranking: a symptom absent at the first recorded step that appeared while training is
# blamed on the training (learning rate) first, whatever the network was built with.
ONSET_SCORE = 100.0

# --- stalled layers -------------------------------------------------------------------------
# Median update/weight ratio below this: the layer is not learning (1e-3 is typical; 1e-6
# would take a million steps to change the weights by their own size).
UPDATE_RATIO_LOW = 1e-6
# ... unless the training loss has fallen below this fraction of its first recorded value: a
# converged fit takes tiny steps (the lab's PReLU/ELU/orthogonal-ReLU runs at loss ~1e-4 after
# 1,500 steps were flagged before this check).
CONVERGED_LOSS_FRACTION = 0.01

# --- activations ----------------------------------------------------------------------------
# Fraction of a layer's inputs saturated (sigmoid/tanh derivative < 1% of its max; see
# activations.SATURATION_FRACTION) that makes a saturation finding; Glorot & Bengio's top
# sigmoid layer sits at ~100% early in training. Healthy tanh + Xavier nets stay below 5%.
SATURATED_FRACTION = 0.4
# Fraction of a layer's input units that are zero for the whole batch: dead ReLUs.
# Healthy He-initialised ReLU nets of width 64 reach 25-50% at depth 20-30 in their top
# layers (deep narrow ReLU nets collapse with depth: Lu et al. 2019, "Dying ReLU and
# Initialization"); a negative bias of -2 kills ~100%.
DEAD_FRACTION = 0.75

# --- input scale ----------------------------------------------------------------------------
# The first layer's input std (or |mean|) outside [1/INPUT_SCALE, INPUT_SCALE] and further
# than INPUT_SCALE from zero-mean: unnormalised inputs (raw pixels in [0, 255]).
INPUT_SCALE = 10.0

# --- vanishing / exploding through time (recurrent layers; diagnose/through_time.py) ---------
# ||dL/dx_t|| (the gradient time step t receives) at the first time steps over the last ones,
# in decades. Bengio, Simard & Frasconi (1994): a product of one Jacobian per step, so it
# changes geometrically with the sequence length. Measured by `graddoctor.lab.rnn` (adding
# problem, H=32, PyTorch's default init, seed 0): at init a tanh RNN sits at -2.0 / -8.6 /
# -17.4 decades for T = 10 / 50 / 100 and an LSTM at -2.3 / -10.1 / -29.3 (its forget gate
# starts near 0.5); after 3000 Adam steps the LSTM, which learnt every T, holds +0.1 / -0.3 /
# +0.1, while the tanh RNN, which learnt only T=10, stays at -4.4 (T=50) and -38.8 (T=100).
# The same threshold as across layers (VANISH_DECADES): the first steps get 1% of the last
# steps' gradient. A ReLU RNN with W_hh = I (planted healthy case) measures 0.0.
TIME_VANISH_DECADES = 2.0
TIME_EXPLODE_DECADES = 2.0
# Beyond this, critical: the first steps get 10^-4 of the last steps' gradient (nothing learnt there).
TIME_CRITICAL_DECADES = 4.0
# The first and last 10% of the time steps (at least one) are averaged (in log10) at each end.
TIME_EDGE_FRACTION = 0.1
# Sequences shorter than this are not judged (no "through time" to speak of).
MIN_TIME_STEPS = 4

# --- the depth axis of real architectures (diagnose/depth.py, patterns.py, impact.py) --------
# Networks with repeated blocks (probe/structure.py) are judged along their depth axis: the
# per-element RMS of dL/d(block output), block by block, relative to the last block of each
# stack, with VANISH_DECADES / EXPLODE_DECADES as for chains of layers. The values below are
# justified by the zoo's *calibration* half only (tests/zoo.py; families split before tuning;
# benchmarks/zoo.py prints both halves), at PyTorch / Hugging Face default init: healthy stacks
# stay within 0.5 decade (ViT, DINOv2, GPT-NeoX, Llama-family decoders) and 2.0 decades (RegNet,
# BiT: BatchNorm growth towards the input, ~0.1 decade per block).
MIN_BLOCKS = 2
# A stage transition (a downsampling layer between stages: resolution and width change) lowers
# the per-element RMS towards the input by up to ~1 decade at library init (ConvNeXt -0.97,
# ConvNeXtV2 -0.94 for the first transition); each transition crossed widens the vanishing band
# by this (not the exploding one: a chain of BN blocks without shortcuts, RegNet's, grows 3.2
# decades across three transitions).
TRANSITION_DECADES = 1.0
# Growth towards the input along a *residual* stream whose blocks hold normalisation layers,
# at most this many decades per block, is the normalisation growth of Yang et al. (2019)
# that such nets train through (RegNet 0.13, BiT 0.11, MobileNetV2 0.07, LeViT 0.05 per block
# at init): info, not a disease.
NORM_GROWTH_PER_BLOCK = 0.25
# The same in a chain of normalised layers (no residual): MobileNetV1 (27 conv-BN-ReLU6 layers)
# grows 3.3 decades at init, 0.12 per layer, and trains; Yang et al. predict 0.083 per
# BatchNorm-ReLU layer. Up to NORM_GROWTH_MAX_DECADES in all (depth ~50 at 0.08: beyond it
# plain BN nets stop training in their experiments) the growth is info.
NORM_GROWTH_PER_LAYER = 0.15
NORM_GROWTH_MAX_DECADES = 4.0
# A branch that enters the stream scaled down (LayerScale, a small residual scale): its exit
# layer's signal this many decades below the block's output is named (ConvNeXt's LayerScale
# 1e-6 measures -6.0, BEiT's 0.1 -0.6 to -1.0; plain residual branches -0.15 .. +0.1).
BRANCH_SCALE_DECADES = 0.5
# Inside a branch, relative to the gradient entering it (its exit): healthy library-init
# branches reach -2.4 decades (Gemma's norm in front of its MLP; pre-LN norms in front of a
# near-uniform attention, ViT/DINOv2 -2.25) and Q/K projections -5.1 (DeiT; they are judged
# apart, patterns.attention_qk). Below this: vanishing inside the branches.
INNER_VANISH_DECADES = 4.0
INNER_EXPLODE_DECADES = 3.0
# Attention Q/K at init: their signal this far below V's (the other inputs of the same
# consumer) is named as the near-uniform-softmax pattern (info).
QK_BELOW_V_DECADES = 1.0

# --- impact for the optimizer in use (diagnose/impact.py) -------------------------------------
# Adam-family steps are lr * m / (sqrt(v) + eps): a gradient RMS well above eps gets a full
# step whatever its size; below ADAM_EPS_FACTOR x eps the step shrinks in proportion (at eps
# it is halved). ConvNeXt with sigmoid (calibration half, harmless) has layers at 1.4 eps.
ADAM_EPS_FACTOR = 1.0
# A layer learns much less than the rest when its median update/weight ratio is below this
# fraction of the median over the network's other layers.
RELATIVE_UPDATE_LOW = 0.01
# ... or below this fraction with a gradient below ADAM_EPS_FACTOR x eps (the eps explains it).
# A 20-layer sigmoid MLP under AdamW moves its first layers 0.035x the rest (gradient 1e-10);
# ConvNeXt with sigmoid (calibration half, harmless) has layers at 4e-8 < 10 eps moving 0.7x.
RELATIVE_UPDATE_EPS = 0.1

# --- 16-bit precision (diagnose/nonfinite.py) -------------------------------------------------
# Fraction of a (non-embedding) layer's gradient elements that are exactly zero in a float16
# run without a GradScaler: beyond this the gradients underflowed (dense float32 gradients of
# Linear/Conv layers have ~0 exact zeros; ReLU layers with dead units a few percent).
UNDERFLOW_FRACTION = 0.5
UNDERFLOW_CRITICAL = 0.9
# ... unless nearly all of them (this share) sit in branches that enter the stream scaled down by
# more than UNDERFLOW_SCALE_DECADES (float16's smallest subnormal is 6e-8): ConvNeXt's LayerScale
# 1e-6 under float16 autocast (zoo calibration half, harmless: the scales learn and the branches
# come back within 50 AdamW steps) — info, with the numbers.
UNDERFLOW_SCALED_SHARE = 0.9
UNDERFLOW_SCALE_DECADES = 3.0
