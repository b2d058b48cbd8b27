"""Text-to-video AR models of the paper (Table 7): Panda-70M tokens of 17x256x256 clips
(5 latent frames x 256 tokens = 1280) with cross-attention in every block to T5 text features
(text_dim 4096: the T5-XXL encoder width, an assumption: the paper names only "T5"),
compute-optimal token counts with the batch growing as the square root, no model dropout,
conditioning dropout 0.1 (the null text). Variants: 400m, 1.1b (default), 2b, 5.2b, 5.2b_4x (4x
over-trained); long (paper 4.4: 81-frame 10 s clips, 21 latent frames x the first 32 tokens =
672 per video, a 3.2B model for 55B tokens; its depth is not given: 34 with width 2176 makes
3.2B with the cross-attention and embeddings); demo / tiny for CPU (the demo's tokens, 5 x 16
and 5 x 4, with text_dim 64: set it to the records' text_emb width).

  python -m vft.main --config=configs/ar_t2v.py:1.1b --workdir=runs/ar_t2v_1.1b
"""
from vft import config_lib

TEXT_DIM = 4096
# variant -> (depth, learning rate, batch size, training tokens)
SIZES = {"400m": (12, 1.33e-3, 128, 3.25e9), "1.1b": (20, 8.0e-4, 256, 12e9),
         "2b": (30, 5.33e-4, 512, 38e9), "5.2b": (42, 3.79e-4, 512, 101e9),
         "5.2b_4x": (42, 3.79e-4, 512, 402e9)}
LONG_FRAMES, LONG_BUDGET, LONG_DEPTH = 21, 32, 34


def get_config(arg: str | None = None):
  arg = arg or "1.1b"
  if arg in SIZES:
    depth, lr, batch, tokens = SIZES[arg]
    return config_lib.ar_config(depth=depth, lr=lr, batch_size=batch, train_tokens=tokens,
                                dropout=0.0, text_dim=TEXT_DIM, tokens_per_sample=5 * 256)
  if arg == "long":
    # lr inversely with the width, from the 400m model's 1.33e-3 at width 768
    c = config_lib.ar_config(depth=LONG_DEPTH, lr=1.33e-3 * 768 / (64 * LONG_DEPTH),
                             batch_size=512, train_tokens=55e9, dropout=0.0, text_dim=TEXT_DIM,
                             tokens_per_sample=LONG_FRAMES * LONG_BUDGET)
    c.train.budget = LONG_BUDGET
    return c
  if arg not in ("demo", "tiny"):
    raise ValueError(f"configs/ar_t2v.py: unknown variant {arg!r}; expected one of "
                     f"{sorted(SIZES) + ['long', 'demo', 'tiny']}")
  # the C2V demo / tiny model on the same tokens, conditioned on text instead of a class
  c = config_lib.sibling_config(__file__, "ar_c2v.py", arg)
  c.model.update(dict(num_classes=0, text_dim=64, dropout=0.0, attn_dropout=0.0))
  return c
