"""Stage 2 of the demo: fine-tune the decoder of the `make demo` model (runs/demo) with full
attention and first-frame conditioning, the encoder frozen: 150 steps of batch 16 and two
evaluations, about 3 minutes on 2 CPU cores.

  python -m vft.main train --config=configs/finetune_decoder_demo.py --workdir=runs/finetune_demo
  python -m vft.main eval  --config=configs/finetune_decoder_demo.py --workdir=runs/finetune_demo

`--config.init.workdir=DIR` starts from another stage-1 run (its data dir follows:
DIR/data). `:smoke` is a seconds-long variant on top of `configs/demo.py:smoke`, started from
`vft demo --config=configs/demo.py:smoke --workdir=/tmp/smoke`.
"""
from vft import config_lib


def get_config(arg: str | None = None):
  smoke = arg == "smoke"
  stage1 = config_lib.sibling_config(__file__, "demo.py", "smoke" if smoke else None)
  c = config_lib.decoder_finetune_config(
      stage1, init_workdir="/tmp/smoke" if smoke else "runs/demo", cond_prob=0.5)
  c.job = "train"
  c.total_steps = 150
  # The decoder continues from a trained state: a shorter warmup and a lower peak than stage 1.
  c.optim.update(dict(lr=1e-3, warmup_steps=20))
  c.checkpoint.every_steps = 50
  c.eval.every_steps = 75
  if smoke:
    c.total_steps = 4
    c.checkpoint.every_steps = 2
    c.eval.every_steps = 4
  elif arg:
    raise ValueError(f"configs/finetune_decoder_demo.py: unknown variant {arg!r} (smoke)")
  return c
