"""VideoFlexTok d18-d18 (paper Table 5): 17x128x128, patch [1, 1, 1], 400B tokens."""
from vft import config_lib

TOKENS_PER_SAMPLE = 5 * 16 * 16


def get_config(arg: str | None = None):
  c = config_lib.base_config()
  c.codec = config_lib.ml_collections.ConfigDict(
      {"name": "vidtok", "tokenizer_id": "vidtok_kl_causal_488_16chn", "spatial_factor": 8,
       "time_factor": 4})
  c.data.global_batch_size = 10240
  c.data.size = 128
  c.mesh.update({"data": 1, "fsdp": -1})
  c.model.update(dict(
      latent_channels=16, patch_size=(1, 1, 1), num_registers=256, enc_width=1152,
      enc_depth=18, dec_width=1152, dec_depth=18, dec_mask="time_block_causal", repa_layer=1,
      repa_depth=2, repa_dim=1024))
  c.train.repa_weight = 1.0
  c.total_steps = config_lib.tokens_to_steps(400e9, 10240, TOKENS_PER_SAMPLE)
  c.optim.warmup_steps = config_lib.tokens_to_steps(4e9, 10240, TOKENS_PER_SAMPLE)
  return c
