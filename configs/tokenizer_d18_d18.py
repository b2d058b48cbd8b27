"""VideoFlexTok d18-d18 (paper Table 5): 17x128x128, patch [1, 1, 1], batch 10240, 400B tokens,
FSDP mesh."""
from vft import config_lib


def get_config(arg: str | None = None):
  c = config_lib.paper_tokenizer_config(
      size=128, patch_size=(1, 1, 1), enc_width=1152, enc_depth=18, dec_width=1152,
      dec_depth=18, batch_size=10240, train_tokens=400e9)
  c.mesh.update({"data": 1, "fsdp": -1})
  return c
