"""VideoFlexTok d18-d28 (paper Table 5): Panda-70M subset, 17x256x256, VidTok latents
5x32x32x16, patch [1, 2, 2], decoder width 1792, 400B tokens (stage 1, time-causal decoder).
The full-attention decoder fine-tune is a separate config."""
from vft import config_lib

TOKENS_PER_SAMPLE = 5 * 16 * 16  # 5 latent frames of 16x16 patches


def get_config(arg: str | None = None):
  c = config_lib.base_config()
  c.codec = config_lib.ml_collections.ConfigDict(
      {"name": "vidtok", "tokenizer_id": "vidtok_kl_causal_488_16chn", "spatial_factor": 8,
       "time_factor": 4})
  c.data.global_batch_size = 10240
  c.data.size = 256
  c.mesh.update({"data": 1, "fsdp": -1})
  c.model.update(dict(
      latent_channels=16, patch_size=(1, 2, 2), num_registers=256, enc_width=1152,
      enc_depth=18, dec_width=1792, dec_depth=28, dec_mask="time_block_causal", repa_layer=1,
      repa_depth=2, repa_dim=1024))
  c.train.repa_weight = 1.0
  c.total_steps = config_lib.tokens_to_steps(400e9, 10240, TOKENS_PER_SAMPLE)
  c.optim.warmup_steps = config_lib.tokens_to_steps(4e9, 10240, TOKENS_PER_SAMPLE)
  return c
