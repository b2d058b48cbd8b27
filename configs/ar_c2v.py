"""Class-to-video AR models of the paper (Table 6): Kinetics-600 tokens of 17x128x128 clips
(5 latent frames x 256 tokens = 1280), 600 classes, 164B training tokens at batch 512, learning
rate scaled inversely with the width, dropout 0.1 (FFN, attention, projection), conditioning
dropout 0.1. Variants: 49m, 85m, 201m (default; the ablations' model), 393m, 679m, 1.33b, 2.29b;
demo (the CPU demo's tokens: 5 x 16 per clip, its 12 classes) and tiny (tests: demo:smoke
tokens, 5 x 4).

  python -m vft.main --config=configs/ar_c2v.py:201m --workdir=runs/ar_c2v_201m
"""
from vft import config_lib

# variant -> (depth, learning rate); width 64 x depth, heads = depth
SIZES = {"49m": (10, 1.6e-3), "85m": (12, 1.33e-3), "201m": (16, 1.0e-3), "393m": (20, 8.0e-4),
         "679m": (24, 6.67e-4), "1.33b": (30, 5.33e-4), "2.29b": (36, 4.4e-4)}


def get_config(arg: str | None = None):
  arg = arg or "201m"
  if arg in SIZES:
    depth, lr = SIZES[arg]
    return config_lib.ar_config(depth=depth, lr=lr, batch_size=512, train_tokens=164e9,
                                dropout=0.1, num_classes=600, tokens_per_sample=5 * 256)
  if arg not in ("demo", "tiny"):
    raise ValueError(f"configs/ar_c2v.py: unknown variant {arg!r}; expected one of "
                     f"{sorted(SIZES) + ['demo', 'tiny']}")
  c = config_lib.ar_demo_config()
  if arg == "tiny":
    c.data.global_batch_size = 8
    c.model.update(dict(depth=2, width=32, num_heads=2, max_len=5 * 4))
    c.total_steps, c.optim.warmup_steps, c.checkpoint.every_steps = 4, 1, 2
  return c
