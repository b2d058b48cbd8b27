"""Shared defaults for the `configs/*.py` files (configs are data: each file's `get_config()`
starts from `base_config()` and overrides fields)."""
from __future__ import annotations

import importlib.util
import os

import ml_collections


def tokens_to_steps(tokens: float, batch_size: int, tokens_per_sample: int) -> int:
  """The paper counts training length in tokens (latent patch positions seen)."""
  return max(1, int(round(tokens / (batch_size * tokens_per_sample))))


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.job = "train"  # default command of `vft` / `python -m vft.main` when none is given
  c.seed = 0
  c.total_steps = 1000

  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  # Of c.mesh, how many slices (TPU) or processes (GPU/CPU) each axis spans over the slow
  # network (DCN); e.g. {"data": 4} on 4 slices. All 1: one slice (plain jax.make_mesh).
  c.mesh_dcn = ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1})
  c.sharding_rules = ml_collections.FieldReference(None, field_type=list)  # None: defaults

  # name "patch" (PatchCodec: spatial_factor, time_factor, pool) or "vidtok" (VidTokCodec from
  # the safetensors file `path`: an official VideoFlexTok checkpoint or a VidTok-only file;
  # `prefix` of its VAE keys, "" = auto-detect).
  c.codec = ml_collections.ConfigDict(
      {"name": "patch", "spatial_factor": 8, "time_factor": 4, "pool": 1, "path": "",
       "prefix": ""})

  c.data = ml_collections.ConfigDict()
  c.data.dir = ""  # "" -> <workdir>/data
  c.data.train_split = "train"
  c.data.eval_split = "eval"
  c.data.global_batch_size = 16
  c.data.worker_count = 0
  c.data.clip_len = 17
  c.data.size = 64

  c.model = ml_collections.ConfigDict(dict(
      latent_channels=16, patch_size=(1, 1, 1), num_registers=256, max_latent_frames=16,
      posemb_max=32, register_posemb_max=None, posemb_init_std=0.02,
      fsq_levels=(8, 8, 8, 5, 5, 5), head_dim=64,
      enc_width=768, enc_depth=12, enc_mask="time_block_causal_last",
      dec_width=768, dec_depth=12, dec_mask="time_block_causal", adaln_expansion=2,
      register_posemb="learnable_sum", prefix_masking=False, max_timestep=1.0, prediction="v",
      x_pred_t_min=0.05,
      repa_layer=None, repa_depth=2, repa_dim=1024,
      dtype="bfloat16", attention_impl="xla", scan=True, remat=True,
      remat_policy="nothing_saveable"))
  c.model.register_posemb_max = ml_collections.FieldReference(None, field_type=int)
  c.model.repa_layer = ml_collections.FieldReference(None, field_type=int)

  c.train = ml_collections.ConfigDict(dict(
      nested_dropout_mode="pow2", cfg_dropout=0.2, repa_weight=0.0,
      loss_space="v", t_logit_mean=0.0, t_logit_std=1.0,
      fsq_bound_weight=0.0, fsq_bound=1.5, grad_accum_steps=1))  # "v": MSE on the velocity (the release); "x": MSE on x0 = x_t - t v
  # fsq_bound_weight > 0 adds weight * mean(relu(|z + shift| - fsq_bound)^2) over the pre-FSQ
  # logits z (the tanh argument): without it Adam keeps pushing saturated logits outward (the
  # straight-through gradient always points past the outer level), and tanh' -> 0 there.
  # grad_accum_steps A > 1: one optimizer update from the averaged gradients of A microbatches
  # of global_batch_size / A rows each (vft.train.step.accumulated_value_and_grad).
  # Regex over parameter paths ("decoder/transformer/blocks_0/attn/wq/kernel"): only matching
  # parameters get gradients and optimizer state; the rest are frozen. "" trains everything.
  c.train.trainable_params = ""
  # First-frame conditioning (decoder fine-tune): with probability `prob` per sample the first
  # `prefix_len` latent frames of x_t are clean (or, with probability `noise_prob`, noised at
  # sigma ~ U(sigma_min, sigma_max)), their registers get the prefix-mask token and the loss
  # skips them. Needs model.prefix_masking.
  c.train.frame_cond = ml_collections.ConfigDict(dict(
      prob=0.0, prefix_len=1, noise_prob=0.5, sigma_min=0.0, sigma_max=0.02))

  c.optim = ml_collections.ConfigDict(dict(
      lr=1.124e-3, init_lr=1e-6, warmup_steps=100, end_lr_factor=0.0, b1=0.9, b2=0.95,
      eps=1e-8, weight_decay=0.05, grad_clip=1.0, ema_decay=0.0))
  # {param-path regex: multiplier} on the updates, e.g. {"encoder/to_latents": 0.1}
  c.optim.lr_multipliers = ml_collections.FieldReference(None, field_type=dict)

  # Initial parameters (a later stage): a workdir of ours (its config.json + latest orbax
  # checkpoint, EMA params if present and use_ema) or an official safetensors file. Parameters
  # the source lacks (e.g. the prefix-mask token) keep their fresh initialisation; both are
  # reported in <workdir>/init_report.json. Ignored once the run has its own checkpoint.
  c.init = ml_collections.ConfigDict(dict(workdir="", official="", use_ema=True))
  c.init.step = ml_collections.FieldReference(None, field_type=int)  # None: latest

  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=500, keep=3, use_async=True))
  # Several processes without jax's preemption sync manager: all-gather the SIGTERM flags every
  # this many steps (a host sync) to agree on the preemption checkpoint (vft/train/preemption.py).
  c.checkpoint.preemption_sync_every = 10
  c.log_every_steps = 50

  c.eval = ml_collections.ConfigDict(dict(
      every_steps=1000, num_clips=8, steps=25, budgets=ml_collections.FieldReference(
          None, field_type=list), guidance_scale=1.0, seed=1234,
      # during training: "psnr", "ssim" always; add "lpips", "mae", "mse", "rfvd" (I3D) if wanted
      metrics=("psnr", "ssim"),
      # Clips of the periodic eval (and of the workdir `vft eval`): the `data.eval_split` records
      # (latents + video) of `data_dir` ("" -> the training data dir). When that split is absent
      # and neither `required` nor `data_dir` is set (e.g. `vft prep` output, which writes only a
      # train split), training runs with periodic eval off and logs why; otherwise a missing
      # split is an error naming the manifest and the split.
      data_dir="", required=False))
  return c


def paper_tokenizer_config(*, size: int, patch_size: tuple[int, int, int], enc_width: int,
                           enc_depth: int, dec_width: int, dec_depth: int, batch_size: int,
                           train_tokens: float, warmup_tokens: float = 4e9
                           ) -> ml_collections.ConfigDict:
  """The settings the paper's Table 5 tokenizers share: 17-frame clips through VidTok
  (vidtok_kl_causal_488_16chn, 16 channels, 8x spatial / 4x temporal), 256 registers per latent
  frame, time-causal decoder, REPA after decoder layer 1 (depth-2 head, DINOv2-L width 1024),
  training length and warmup given in tokens (latent patch positions)."""
  c = base_config()
  c.codec = ml_collections.ConfigDict(
      {"name": "vidtok", "tokenizer_id": "vidtok_kl_causal_488_16chn", "spatial_factor": 8,
       "time_factor": 4, "path": "", "prefix": "", "dtype": "float32"})
  c.data.global_batch_size = batch_size
  c.data.clip_len = 17
  c.data.size = size
  c.model.update(dict(
      latent_channels=16, patch_size=patch_size, num_registers=256, enc_width=enc_width,
      enc_depth=enc_depth, dec_width=dec_width, dec_depth=dec_depth,
      dec_mask="time_block_causal", repa_layer=1, repa_depth=2, repa_dim=1024))
  c.train.repa_weight = 1.0
  latent = size // 8
  tokens_per_sample = (1 + (c.data.clip_len - 1) // 4) * (latent // patch_size[1]) * (
      latent // patch_size[2])
  c.total_steps = tokens_to_steps(train_tokens, batch_size, tokens_per_sample)
  c.optim.warmup_steps = tokens_to_steps(warmup_tokens, batch_size, tokens_per_sample)
  return c


def decoder_finetune_config(stage1: ml_collections.ConfigDict, *, init_workdir: str = "",
                            init_official: str = "", cond_prob: float = 0.5
                            ) -> ml_collections.ConfigDict:
  """The paper's second stage from a stage-1 config: the encoder frozen (no gradient, no
  optimizer state), the decoder attention switched to `full`, the prefix-mask token added and
  first-frame conditioning on (prefix 1 latent frame; a small noise level sigma ~ U(0, 0.02) on
  the condition with probability 0.5, as the release's PrefixMinRFNoiseModule). Its data dir
  follows `init.workdir` (<init.workdir>/data) unless set."""
  c = ml_collections.ConfigDict(stage1.to_dict(preserve_field_references=True))
  c.job = "train"
  c.model.update(dict(dec_mask="full", prefix_masking=True))
  c.train.trainable_params = "^decoder/"
  c.train.frame_cond.update(dict(prob=float(cond_prob), prefix_len=1, noise_prob=0.5,
                                 sigma_min=0.0, sigma_max=0.02))
  c.init.workdir = ml_collections.FieldReference(init_workdir, field_type=str)
  c.init.official = init_official
  if not c.data.dir and init_workdir:
    c.data.dir = c.init.get_ref("workdir") + "/data"
  return c


def sibling_config(this_file: str, name: str, arg: str | None = None
                   ) -> ml_collections.ConfigDict:
  """`get_config(arg)` of the config file `name` next to `this_file` (configs are loaded by
  path, so `configs` need not be importable)."""
  path = os.path.join(os.path.dirname(os.path.abspath(this_file)), name)
  spec = importlib.util.spec_from_file_location(f"_vft_config_{name.removesuffix('.py')}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def ar_config(*, depth: int, lr: float, batch_size: int, train_tokens: float,
              dropout: float, num_classes: int = 0, text_dim: int = 0,
              tokens_per_sample: int = 1280, warmup_fraction: float = 0.025
              ) -> ml_collections.ConfigDict:
  """The AR transformer's settings (paper F.2, Tables 6 and 7): `config.task = "ar"` on a token
  dataset (`vft tokenize-dataset`); width 64 x depth, heads = depth, SwiGLU MLP ratio 4 (hidden
  8 x width / 3), learned positions, max sequence 1280, vocabulary 64 000 (the FSQ codebook);
  AdamW (weight decay 0.05, clip 1.0) with linear warmup over `warmup_fraction` of training
  from 1e-6, cosine decay; training length in tokens (`tokens_per_sample` per sequence);
  conditioning dropout 0.1 to the null class / null text."""
  c = base_config()
  c.task = "ar"
  c.data.global_batch_size = batch_size
  c.model = ml_collections.ConfigDict(dict(
      vocab_size=64000, depth=depth, width=64 * depth, num_heads=depth, max_len=1280,
      num_classes=num_classes, text_dim=text_dim, dropout=dropout, attn_dropout=dropout,
      dtype="bfloat16", param_dtype="float32", scan=True, remat=True))
  # order: "time_first" (paper C.3) | "depth_first"; budget: train on the first K tokens of
  # every latent frame (0 = all); trainable_params: as for the tokenizer ("" = all).
  c.train = ml_collections.ConfigDict(dict(
      cfg_dropout=0.1, order="time_first", budget=0, trainable_params="", grad_accum_steps=1))
  c.total_steps = tokens_to_steps(train_tokens, batch_size, tokens_per_sample)
  c.optim.update(dict(lr=lr, init_lr=1e-6, end_lr_factor=0.0, weight_decay=0.05, grad_clip=1.0,
                      warmup_steps=max(1, int(round(warmup_fraction * c.total_steps)))))
  c.eval.update(dict(every_steps=5000, num_clips=64))
  return c


def ar_demo_config(num_classes: int = 12, tokens_per_frame: int = 16,
                   latent_frames: int = 5) -> ml_collections.ConfigDict:
  """The CPU demo's class-to-video AR model (configs/ar_c2v.py:demo, and the second stage of
  configs/demo.py): 4 layers of width 128 over the demo tokenizer's 5 x 16 tokens, 12 classes."""
  c = ar_config(depth=4, lr=1e-3, batch_size=16, train_tokens=1, dropout=0.1,
                num_classes=num_classes, tokens_per_sample=latent_frames * tokens_per_frame)
  c.model.update(dict(width=128, num_heads=4, max_len=latent_frames * tokens_per_frame,
                      dtype="float32", scan=False, remat=False))
  c.total_steps, c.optim.warmup_steps = 1000, 25
  c.checkpoint.every_steps, c.log_every_steps = 200, 20
  c.eval.update(dict(every_steps=500, num_clips=8))
  return c


def read_workdir_config(workdir, what: str = "`vft train`") -> ml_collections.ConfigDict:
  """The config a run wrote into `<workdir>/config.json`; FileNotFoundError naming the file when
  it is absent (`what`: the command that would have written it, for the message)."""
  import json
  from vft import files
  path = files.absolute(workdir) / "config.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found: not a vft workdir (expected config.json and "
                            f"checkpoints/ from {what})")
  return ml_collections.ConfigDict(json.loads(path.read_text()))
