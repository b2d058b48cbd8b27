"""`vft eval`: reconstruct held-out clips at every token budget from the latest checkpoint and
write recon_budgets.mp4/.gif, budget_curve.png and metrics.json into the workdir."""
from __future__ import annotations

import os

import jax

from vft import checkpoint as ckpt_lib
from vft import metrics as metrics_lib
from vft import sharding
from vft.eval.recon import BudgetEvaluator, write_artifacts
from vft.models.vae import make_codec
from vft.train import loop
from vft.train import optimizer as optim_lib
from vft.train import state as state_lib


def restore_eval_params(config, workdir: str, model, spec):
  """Params (EMA if present) of the latest checkpoint, without materialising a fresh state."""
  mesh = sharding.mesh_from_config(config)
  rules = sharding.rules_from_config(config.sharding_rules)
  tx = optim_lib.make_optimizer(config)
  use_ema = float(config.optim.get("ema_decay", 0.0)) > 0
  abstract = state_lib.abstract_state(model, tx, (1, *spec), use_ema, mesh, rules)
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), use_async=False)
  if ckpt.latest_step() is None:
    raise FileNotFoundError(f"no checkpoint under {ckpt.directory}; train first (`vft train`)")
  step, state = ckpt.restore(abstract)
  ckpt.close()
  return step, (state.ema_params if state.ema_params is not None else state.params)


def evaluate(config, workdir: str) -> dict:
  data_root = loop.data_dir(config, workdir)
  spec = loop.latent_spec(data_root, config.data.train_split)
  model = loop.build_model(config, spec)
  step, params = restore_eval_params(config, workdir, model, spec)
  latents, videos = loop.load_eval_clips(config, data_root)
  budgets = loop.budgets_for(config, model)
  evaluator = BudgetEvaluator(model, make_codec(config.codec), steps=int(config.eval.steps),
                              mesh=sharding.mesh_from_config(config),
                              rules=sharding.rules_from_config(config.sharding_rules),
                              guidance_scale=float(config.eval.guidance_scale),
                              seed=int(config.eval.seed),
                              metrics=tuple(config.eval.get("metrics", ("psnr", "ssim"))))
  result = evaluator(params, latents, videos, budgets)
  paths = {}
  if jax.process_index() == 0:
    paths = write_artifacts(workdir, result, videos, steps=step,
                            extra={"sampler_steps": int(config.eval.steps)})
    for k, p, s in zip(budgets, result["psnr"], result["ssim"]):
      metrics_lib.log("budget %4d tokens/frame: PSNR %.2f dB  SSIM %.4f", k, p, s)
  return {"step": step, "budgets": budgets, "psnr": result["psnr"], "ssim": result["ssim"],
          **{m: result[m] for m in result["metrics"] if m not in ("psnr", "ssim")},
          "paths": paths}
