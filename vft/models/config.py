"""A frozen, hashable view of `config.model` that the Flax modules are built from."""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from vft.models import fsq as fsq_lib
from vft.models.masks import MASK_MODES
from vft.models.transformer import ATTENTION_IMPLS, REMAT_POLICIES

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# The decoder's register-branch operations; `register_order` lists them in execution order (the
# release's configs fix the order in their module_dict; absent modules are skipped).
REGISTER_OPS = ("posemb", "nested_dropout", "prefix_mask", "null_cond")
PATCH_POSEMBS = ("learnable_sum", "learnable_prod")
REGISTER_POSEMBS = ("learnable_sum", "learnable_prod", "sincos", "none")


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
  latent_channels: int
  patch_size: tuple[int, int, int] = (1, 1, 1)
  num_registers: int = 256
  max_latent_frames: int = 16
  posemb_max: int = 32  # learned 3D patch posemb table size (>= T', h, w)
  dec_posemb_max: int | None = None  # the decoder's 3D patch posemb table; None: posemb_max
  patch_posemb: str = "learnable_sum"  # or "learnable_prod" (3D patch posembs: sum/product)
  register_posemb_max: int | None = None  # decoder (t, n) table; None: max(posemb_max, N)
  # sincos register posemb: a fixed table [T_max, N_max, D]; None: (max_latent_frames, N)
  register_posemb_shape: tuple[int, int] | None = None
  posemb_init_std: float = 0.02  # learned posemb init (trunc-normal std)
  fsq_levels: tuple[int, ...] = fsq_lib.DEFAULT_LEVELS
  head_dim: int = 64
  enc_width: int = 768
  enc_depth: int = 12
  enc_mask: str = "time_block_causal_last"
  dec_width: int = 768
  dec_depth: int = 12
  dec_mask: str = "time_block_causal"
  adaln_expansion: int = 2
  register_posemb: str = "learnable_sum"  # "learnable_prod", "sincos" or "none"
  prefix_masking: bool = False  # first-frame conditioning module (decoder fine-tune)
  register_order: tuple[str, ...] = REGISTER_OPS  # execution order of the register-branch ops
  max_timestep: float = 1.0
  # What the network outputs: "v" (velocity eps - x0; the release) or "x" (clean latents x0,
  # turned into v = (x_t - x0_hat) / max(t, x_pred_t_min)). x-prediction suits codecs whose
  # patch vectors are wider than the model (the demo's 768-d pixel patches): a v-network would
  # have to pass the noise through a width-D bottleneck (JiT, Li & He 2025).
  prediction: str = "v"
  x_pred_t_min: float = 0.05
  repa_layer: int | None = None  # decoder block (0-based) whose output feeds the REPA head
  repa_depth: int = 2
  repa_dim: int = 1024
  dtype: str = "float32"  # compute dtype; params stay float32
  attention_impl: str = "xla"
  scan: bool = False
  remat: bool = False
  remat_policy: str = "nothing_saveable"

  def __post_init__(self):
    def bad(field, msg):
      raise ValueError(f"config.model.{field}: {msg}")
    if len(self.patch_size) != 3 or min(self.patch_size) < 1:
      bad("patch_size", f"expected 3 positive ints [pt, ph, pw], got {self.patch_size}")
    for name in ("enc_width", "dec_width"):
      w = getattr(self, name)
      if w % self.head_dim:
        bad(name, f"{w} is not a multiple of head_dim {self.head_dim}")
    for name in ("enc_mask", "dec_mask"):
      if getattr(self, name) not in MASK_MODES:
        bad(name, f"{getattr(self, name)!r} is not one of {MASK_MODES}")
    if self.num_registers < 1:
      bad("num_registers", f"must be >= 1, got {self.num_registers}")
    if self.dtype not in DTYPES:
      bad("dtype", f"{self.dtype!r} is not one of {sorted(DTYPES)}")
    if self.attention_impl not in ATTENTION_IMPLS:
      bad("attention_impl", f"{self.attention_impl!r} is not one of {ATTENTION_IMPLS}")
    if self.remat_policy not in REMAT_POLICIES:
      bad("remat_policy", f"{self.remat_policy!r} is not one of {sorted(REMAT_POLICIES)}")
    if self.register_posemb not in REGISTER_POSEMBS:
      bad("register_posemb", f"{self.register_posemb!r} is not one of {REGISTER_POSEMBS}")
    if self.patch_posemb not in PATCH_POSEMBS:
      bad("patch_posemb", f"{self.patch_posemb!r} is not one of {PATCH_POSEMBS}")
    if sorted(self.register_order) != sorted(REGISTER_OPS):
      bad("register_order", f"{self.register_order} must order exactly {REGISTER_OPS}")
    if self.register_posemb_shape is not None and len(self.register_posemb_shape) != 2:
      bad("register_posemb_shape", f"expected (T_max, N_max), got {self.register_posemb_shape}")
    if self.repa_layer is not None and not 0 <= self.repa_layer < self.dec_depth:
      bad("repa_layer", f"{self.repa_layer} outside [0, dec_depth={self.dec_depth})")
    if self.prediction not in ("v", "x"):
      bad("prediction", f"{self.prediction!r} is not 'v' or 'x'")
    if self.adaln_expansion not in (1, 2):
      bad("adaln_expansion", f"must be 1 or 2, got {self.adaln_expansion}")
    fsq_lib.codebook_size(self.fsq_levels)

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  @property
  def code_dim(self) -> int:
    return len(self.fsq_levels)

  @classmethod
  def from_config(cls, cfg: Any) -> "TokenizerConfig":
    """From an ml_collections ConfigDict (or dict); unknown keys are an error."""
    d = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields)
    if unknown:
      raise ValueError(f"config.model: unknown fields {unknown}; known: {sorted(fields)}")
    for k in ("patch_size", "fsq_levels", "register_posemb_shape"):
      if d.get(k) is not None:
        d[k] = tuple(int(v) for v in d[k])
    if d.get("register_order") is not None:
      d["register_order"] = tuple(str(v) for v in d["register_order"])
    return cls(**d)
