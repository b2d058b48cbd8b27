"""VideoFlexTok d12-d12 (paper Table 5, ablation model): Kinetics-600, 17x128x128, VidTok
latents 5x16x16x16, patch [1, 1, 1], 256 registers per latent frame, batch 512, 100B tokens.

  python -m vft.main train --config=configs/tokenizer_d12_d12.py --workdir=...
"""
from vft import config_lib


def get_config(arg: str | None = None):
  c = config_lib.paper_tokenizer_config(
      size=128, patch_size=(1, 1, 1), enc_width=768, enc_depth=12, dec_width=768, dec_depth=12,
      batch_size=512, train_tokens=100e9)
  c.checkpoint.every_steps = 2000
  c.eval.every_steps = 10000
  if arg == "small_batch":  # benchmark / smoke variant of the same architecture
    c.data.global_batch_size = 8
  return c
