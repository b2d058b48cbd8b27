"""VideoFlexTok d12-d12 (paper Table 5, ablation model): Kinetics-600, 17x128x128, VidTok
latents 5x16x16x16, patch [1, 1, 1], 256 registers per latent frame, batch 512, 100B tokens.

  python -m vft.main train --config=configs/tokenizer_d12_d12.py --workdir=...
"""
from vft import config_lib

TOKENS_PER_SAMPLE = 5 * 16 * 16  # latent patch positions of a 17x128x128 clip


def get_config(arg: str | None = None):
  c = config_lib.base_config()
  c.codec = config_lib.ml_collections.ConfigDict(
      {"name": "vidtok", "tokenizer_id": "vidtok_kl_causal_488_16chn", "spatial_factor": 8,
       "time_factor": 4})
  c.data.global_batch_size = 512
  c.data.clip_len = 17
  c.data.size = 128
  c.model.update(dict(
      latent_channels=16, patch_size=(1, 1, 1), num_registers=256, enc_width=768, enc_depth=12,
      dec_width=768, dec_depth=12, dec_mask="time_block_causal", repa_layer=1, repa_depth=2,
      repa_dim=1024))
  c.train.repa_weight = 1.0
  c.total_steps = config_lib.tokens_to_steps(100e9, 512, TOKENS_PER_SAMPLE)
  c.optim.warmup_steps = config_lib.tokens_to_steps(4e9, 512, TOKENS_PER_SAMPLE)
  c.checkpoint.every_steps = 2000
  c.eval.every_steps = 10000
  if arg == "small_batch":  # benchmark / smoke variant of the same architecture
    c.data.global_batch_size = 8
  return c
