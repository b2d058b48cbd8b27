"""The AR task (`config.task = "ar"`): next-token cross-entropy of `vft.models.ar.ARTransformer`
on token datasets written by `vft tokenize-dataset` (vft.data.tokenize_job).

A record's ids [T', N] become one sequence (`vft.ar.order.to_sequence`, `config.train.order`:
"time_first" (paper C.3) or "depth_first"), optionally only the first `config.train.budget`
tokens of every latent frame (the paper's 32-token long-video models; 0 = all N). Conditions:
  label     [B] int32 when config.model.num_classes > 0 (records without one, label -1, and a
            `config.train.cfg_dropout` share of the others get the learned null class
            `num_classes`)
  text_emb  [B, Lt, Dt] + text_len [B] when config.model.text_dim > 0 (null text for CFG: the
            same share with an all-False text mask and zero embeddings)
Condition dropout draws from the step key; model dropout (config.model.dropout) from its own
fold, so a resumed run replays them exactly.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vft import metrics as metrics_lib
from vft import sharding
from vft.data import pipeline, writer
from vft.train import tasks

ORDERS = ("time_first", "depth_first")


def check_token_dataset(config, data_root: str, split: str | None = None) -> dict[str, Any]:
  """Checks a token dataset against an AR config; -> {"tokens": [T', N], "text": [Lt, Dt] | None,
  "vocab_size", "label_names"}. Errors name the manifest, the field and both values."""
  split = split or config.data.train_split
  manifest = writer.read_manifest(data_root)
  where = f"{os.path.join(os.fspath(data_root), writer.MANIFEST_NAME)} (split {split!r})"
  entry = writer.split_entry(manifest, split, data_root)
  spec = entry.get("example_spec") or {}
  if "tokens" not in spec:
    raise ValueError(f"{where}: records have no 'tokens' field (fields: {sorted(spec)}); an AR "
                     "run reads a token dataset: `vft tokenize-dataset --tokenizer=... "
                     "--input=<vft prep output> --output=...`")
  t, n = spec["tokens"]["shape"]
  m = config.model
  vocab = manifest.get("vocab_size")
  if vocab is not None and int(vocab) > int(m.vocab_size):
    raise ValueError(f"{where}: the tokenizer has vocab_size={vocab}, more than "
                     f"config.model.vocab_size={m.vocab_size}")
  budget = int(config.train.get("budget", 0)) or n
  if not 1 <= budget <= n:
    raise ValueError(f"config.train.budget={budget}: must be in [1, {n}] (tokens per latent "
                     f"frame in {where}) or 0 for all")
  if t * budget > int(m.max_len):
    raise ValueError(f"{where}: sequences of {t} latent frames x {budget} tokens = "
                     f"{t * budget} exceed config.model.max_len={m.max_len}")
  order = str(config.train.get("order", "time_first"))
  if order not in ORDERS:
    raise ValueError(f"config.train.order={order!r}: expected one of {ORDERS}")
  labels = manifest.get("label_names")
  if int(m.num_classes) > 0:
    if "label" not in spec:
      raise ValueError(f"{where}: config.model.num_classes={m.num_classes} needs a 'label' "
                       f"field; the records have {sorted(spec)}")
    if labels is not None and len(labels) != int(m.num_classes):
      raise ValueError(f"{where}: label_names has {len(labels)} classes but "
                       f"config.model.num_classes={m.num_classes}")
  text = None
  if int(m.text_dim) > 0:
    if "text_emb" not in spec or "text_len" not in spec:
      raise ValueError(f"{where}: config.model.text_dim={m.text_dim} needs 'text_emb' and "
                       f"'text_len' fields (prep with --config.text.kind=t5); the records have "
                       f"{sorted(spec)}")
    text = list(spec["text_emb"]["shape"])
    if text[-1] != int(m.text_dim):
      raise ValueError(f"{where}: text_emb {text} has width {text[-1]} but "
                       f"config.model.text_dim={m.text_dim}")
  return {"tokens": [t, n], "text": text, "vocab_size": vocab, "label_names": labels}


class ARTask:
  """Next-token cross-entropy of the AR transformer on token datasets (module doc)."""
  name = "ar"

  def __init__(self, config, data_root: str):
    from vft.models.ar import ARConfig, ARTransformer
    self.config, self.data_root = config, data_root
    self.info = check_token_dataset(config, data_root)
    self.spec = self.info["tokens"]  # [T', N]
    self.model = ARTransformer(ARConfig.from_config(config.model))
    self.num_classes = int(config.model.num_classes)
    self.text_dim = int(config.model.text_dim)
    self.fields = ("tokens",) + (("label",) if self.num_classes else ()) + (
        ("text_emb", "text_len") if self.text_dim else ())
    self.budget = int(config.train.get("budget", 0)) or self.spec[1]
    self.order = str(config.train.get("order", "time_first"))
    self.cond_dropout = float(config.train.cfg_dropout)
    self.loss_fn = self.make_loss_fn(train=True)

  @property
  def seq_len(self) -> int:
    return self.spec[0] * self.budget

  def sequence(self, tokens: jax.Array) -> jax.Array:
    """tokens [B, T', N] -> [B, T' * budget] int32 in `config.train.order`."""
    from vft.ar import order
    return order.to_sequence(tokens.astype(jnp.int32), self.order, budget=self.budget)

  def conditions(self, batch: dict, null: jax.Array | None) -> dict[str, jax.Array]:
    """The model's condition kwargs from a batch; rows where `null` [B] is True get the null
    class / null text."""
    out = {}
    b = batch["tokens"].shape[0]
    null = jnp.zeros((b,), bool) if null is None else null
    if self.num_classes:
      label = batch["label"].astype(jnp.int32)
      out["label"] = jnp.where(null | (label < 0), self.num_classes, label)
    if self.text_dim:
      text = batch["text_emb"]
      mask = jnp.arange(text.shape[1])[None] < batch["text_len"][:, None]
      mask = mask & ~null[:, None]
      out["text"] = jnp.where(mask[..., None], text, jnp.zeros_like(text))
      out["text_mask"] = mask
    return out

  def init_params(self, key) -> Any:
    batch = {"tokens": jnp.zeros((1, *self.spec), jnp.int32),
             "label": jnp.zeros((1,), jnp.int32), "text_len": jnp.ones((1,), jnp.int32)}
    if self.text_dim:
      batch["text_emb"] = jnp.zeros((1, *self.info["text"]), jnp.float32)
    return self.model.init({"params": key, "dropout": key}, self.sequence(batch["tokens"]),
                           **self.conditions(batch, None), deterministic=True)["params"]

  def null_rows(self, key, batch: int) -> jax.Array | None:
    """[B] bool: the rows whose condition is dropped (classifier-free guidance), each with
    probability config.train.cfg_dropout; None when it is 0. `key`: the loss key's first split."""
    if self.cond_dropout <= 0:
      return None
    return jax.random.bernoulli(key, self.cond_dropout, (batch,))

  def make_loss_fn(self, train: bool) -> Callable:
    """loss(params, batch, key) -> (mean next-token cross-entropy, {accuracy}). batch: tokens
    [B, T', N] (+ label [B], text_emb [B, Lt, Dt], text_len [B]). `train`: condition dropout
    and model dropout on."""

    def loss_fn(params, batch, key):
      seq = self.sequence(batch["tokens"])
      k_null, k_drop = jax.random.split(key)
      null = self.null_rows(k_null, seq.shape[0]) if train else None
      logits = self.model.apply({"params": params}, seq, **self.conditions(batch, null),
                                deterministic=not train, rngs={"dropout": k_drop})
      logits = sharding.constrain(logits.astype(jnp.float32), ("batch", "length", "vocab"))
      loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, seq))
      accuracy = jnp.mean((jnp.argmax(logits, -1) == seq).astype(jnp.float32))
      return loss, {"accuracy": accuracy}

    return loss_fn

  def check_init(self, workdir: str) -> None:
    del workdir
    init = self.config.get("init", None)
    if init is not None and (init.get("workdir") or init.get("official")):
      raise ValueError("config.init.workdir / config.init.official: initialising an AR model "
                       "from another run is not supported (config.task='ar')")

  def initial_params(self, params):
    del params
    return None

  def eval_hook(self, trainer) -> Callable | None:
    """Held-out next-token loss / accuracy (no dropout, conditional) on up to config.eval.num_clips
    records of the eval split: eval/loss, eval/accuracy, eval/perplexity."""
    cfg = self.config
    if not tasks.has_eval_split(cfg, self.data_root):
      return None
    root = tasks.eval_data_dir(cfg, self.data_root)
    check_token_dataset(cfg, root, cfg.data.eval_split)
    records = pipeline.load_split(root, cfg.data.eval_split, fields=self.fields)
    records = records[: int(cfg.eval.num_clips)]
    if not records:
      raise ValueError(f"eval split {cfg.data.eval_split!r} in {root} is empty")
    batch = {f: np.stack([np.asarray(r[f]) for r in records]) for f in self.fields}
    rep = sharding.replicated(trainer.mesh)
    batch = jax.device_put(batch, rep)
    fn = sharding.jit(self.make_loss_fn(train=False), trainer.mesh, trainer.rules,
                      out_shardings=rep)
    key = jax.random.key(int(cfg.eval.seed))

    def hook(params, step: int, writer_) -> None:
      loss, aux = fn(params, batch, key)
      res = metrics_lib.to_scalars(jax.device_get({"loss": loss, **aux}))
      res["perplexity"] = float(np.exp(res["loss"]))
      writer_.write_scalars(step, {f"eval/{k}": v for k, v in res.items()})
      metrics_lib.log("eval at step %d: loss %.4f, accuracy %.4f", step, res["loss"],
                      res["accuracy"])
    return hook


def load_ar(workdir: str, step: int | None = None):
  """An AR run's model and weights for generation: `<workdir>/config.json` (written by
  `vft train`) + checkpoint `step` (None: the latest) of `<workdir>/checkpoints`, EMA params
  when the run kept them, else params; only those are read (no optimizer state), onto the
  first local device. -> (ARTransformer, params, config, info) with info {"step", "ema",
  "order", "budget", "data_dir", "tokens_shape" [T', N], "vocab_size", "label_names",
  "tokenizer"}; the last four from the token dataset's manifest.json when it is readable,
  else None."""
  import flax.linen as nn
  from vft import checkpoint as ckpt_lib
  from vft import config_lib
  from vft import files
  from vft.models.ar import ARConfig, ARTransformer
  workdir = os.fspath(workdir)
  cfg_path = files.absolute(workdir) / "config.json"
  config = config_lib.read_workdir_config(workdir, "`vft train` with config.task='ar'")
  if str(config.get("task", "tokenizer")) != "ar":
    raise ValueError(f"{cfg_path}: task={config.get('task', 'tokenizer')!r}, not an AR run "
                     "(config.task='ar'); load a tokenizer workdir with vft.VideoTokenizer.load")
  model = ARTransformer(ARConfig.from_config(config.model))
  m = config.model
  cond = {}
  if int(m.num_classes):
    cond["label"] = jnp.zeros((1,), jnp.int32)
  if int(m.text_dim):
    cond["text"] = jnp.zeros((1, 1, int(m.text_dim)), jnp.float32)
    cond["text_mask"] = jnp.ones((1, 1), bool)
  shapes = jax.eval_shape(lambda k: nn.unbox(model.init(
      {"params": k}, jnp.zeros((1, 1), jnp.int32), **cond, deterministic=True)["params"]),
      jax.random.key(0))
  directory = os.path.join(workdir, "checkpoints")
  step, saved = ckpt_lib.state_metadata(directory, step)
  ema = saved.get("ema_params") is not None
  name = "ema_params" if ema else "params"
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = {name: jax.tree_util.tree_map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), shapes)}
  params = ckpt_lib.restore_state_subtree(directory, step, target)[name]
  data_root = config.data.get("dir") or os.path.join(workdir, "data")
  info = {"step": step, "ema": ema, "order": str(config.train.get("order", "time_first")),
          "budget": int(config.train.get("budget", 0)), "data_dir": data_root,
          "tokens_shape": None, "vocab_size": None, "label_names": None, "tokenizer": None}
  try:
    manifest = writer.read_manifest(data_root, check_files=False)
  except (FileNotFoundError, ValueError):
    manifest = None
  if manifest is not None:
    info.update({k: manifest.get(k) for k in ("tokens_shape", "vocab_size", "label_names",
                                              "tokenizer")})
  return model, params, config, info
