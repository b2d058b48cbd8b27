"""VideoFlexTok d18-d28 stage 2 (paper Table 5, "decoder full-attention fine-tuning 400B
tokens"): the encoder frozen, the decoder attention `full`, first-frame conditioning (a clean
VidTok latent for the first latent frame with probability 0.5 [inferred: the paper's value is
lost in the text], sigma ~ U(0, 0.02) on it with probability 0.5, as the release's
PrefixMinRFNoiseModule). Optimiser as stage 1 (AdamW 1.124e-3, warmup 4B tokens from 1e-6,
cosine), REPA kept.

Start from our stage-1 run or from the released checkpoint (downloaded on your side):

  python -m vft.main train --config=configs/finetune_decoder_d18_d28.py --workdir=... \\
      --config.init.workdir=runs/d18_d28 --config.data.dir=...
  python -m vft.main train --config=configs/finetune_decoder_d18_d28.py --workdir=... \\
      --config.init.official=videoflextok_d18_d28/model.safetensors --config.data.dir=...
"""
from vft import config_lib


def get_config(arg: str | None = None):
  stage1 = config_lib.sibling_config(__file__, "tokenizer_d18_d28.py")
  c = config_lib.decoder_finetune_config(stage1, cond_prob=0.5)
  latent = c.data.size // 8
  tokens_per_sample = (1 + (c.data.clip_len - 1) // 4) * (latent // c.model.patch_size[1]) * (
      latent // c.model.patch_size[2])
  c.total_steps = config_lib.tokens_to_steps(400e9, c.data.global_batch_size, tokens_per_sample)
  c.checkpoint.every_steps = 2000
  c.eval.every_steps = 10000
  if arg == "small_batch":  # benchmark / smoke variant of the same architecture
    c.data.global_batch_size = 8
  elif arg:
    raise ValueError(f"configs/finetune_decoder_d18_d28.py: unknown variant {arg!r} "
                     "(small_batch)")
  return c
