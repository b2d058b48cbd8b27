"""VideoFlexTok d18-d28 (paper Table 5): Panda-70M subset, 17x256x256, VidTok latents
5x32x32x16, patch [1, 2, 2], decoder width 1792, batch 10240, 400B tokens (stage 1,
time-causal decoder). The full-attention decoder fine-tune is a separate config."""
from vft import config_lib


def get_config(arg: str | None = None):
  c = config_lib.paper_tokenizer_config(
      size=256, patch_size=(1, 2, 2), enc_width=1152, enc_depth=18, dec_width=1792,
      dec_depth=28, batch_size=10240, train_tokens=400e9)
  c.mesh.update({"data": 1, "fsdp": -1})
  return c
