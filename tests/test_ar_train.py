"""AR training through the one Trainer (config.task="ar") on tiny token datasets: the loss drops,
exact resume, sharded == single device, class-condition dropout, the eval hook, the budget
option, dataset/config mismatch errors, and `load_ar` for generation."""
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import apply_overrides
from vft import sharding
from vft.ar import order
from vft.data import pipeline
from vft.data.writer import MANIFEST_NAME, ShardWriter
from vft.train import ar_task, loop
from vft.train import optimizer as optim_lib
from vft.train import state as state_lib
from vft.train.step import jit_train_step

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from configs import ar_c2v  # noqa: E402

VOCAB, CLASSES, T, N = 64, 12, 5, 4


def write_token_dataset(out, num_train=32, num_eval=8, vocab=VOCAB, classes=CLASSES, n=N):
  """Token records [T, n] whose ids follow the label (learnable), label in [0, classes), and
  manifest.json's vocab_size / label_names as `vft tokenize-dataset` writes them."""
  for split, count in (("train", num_train), ("eval", num_eval)):
    if not count:
      continue
    with ShardWriter(out, split, records_per_shard=16) as w:
      for i in range(count):
        lab = i % classes
        ids = ((lab * 5 + 3 * np.arange(T * n)) % vocab).reshape(T, n).astype(np.int32)
        w.write({"tokens": ids, "label": np.int32(lab), "video_id": f"v{i}"})
  path = os.path.join(out, MANIFEST_NAME)
  with open(path) as f:
    manifest = json.load(f)
  manifest.update(vocab_size=vocab, label_names=[f"class{i}" for i in range(classes)],
                  tokens_shape=[T, n])
  with open(path, "w") as f:
    json.dump(manifest, f)
  return str(out)


def ar_config(data_dir, **overrides):
  c = ar_c2v.get_config("tiny")
  c.data.dir = str(data_dir)
  c.model.vocab_size = VOCAB
  c.checkpoint.use_async = False
  c.eval.every_steps = 1000
  return apply_overrides(c, overrides)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return write_token_dataset(tmp_path_factory.mktemp("tokens"))


def test_loss_decreases_and_eval_hook_writes_eval_loss(data_dir, tmp_path):
  cfg = ar_config(data_dir, total_steps=30, **{"optim.lr": 3e-3, "optim.warmup_steps": 3,
                                                "eval.every_steps": 30, "log_every_steps": 1})
  tr = loop.Trainer(cfg, str(tmp_path))
  batch = tr.next_batch()
  loss_fn = jax.jit(tr.task.make_loss_fn(train=False))
  before = float(loss_fn(tr.state.params, batch, jax.random.key(0))[0])
  assert abs(before - np.log(VOCAB)) < 0.3  # a fresh model is near uniform
  tr.run(tr.task.eval_hook(tr))
  after = float(loss_fn(tr.state.params, batch, jax.random.key(0))[0])
  tr.close()
  assert after < before - 0.5, (before, after)  # observed: 4.18 -> 3.20 in 30 steps
  from tensorboard.backend.event_processing import event_accumulator
  events = [os.path.join(tmp_path, f) for f in os.listdir(tmp_path) if "tfevents" in f]
  assert events, os.listdir(tmp_path)
  acc = event_accumulator.EventAccumulator(events[0]).Reload()
  tags = acc.Tags()["tensors"] + acc.Tags()["scalars"]
  assert "eval/loss" in tags and "eval/perplexity" in tags, tags


@pytest.mark.slow
def test_resume_equals_uninterrupted_and_load_ar(data_dir, tmp_path):
  over = {"total_steps": 4, "checkpoint.every_steps": 2, "optim.ema_decay": 0.5}
  tr = loop.Trainer(ar_config(data_dir, **over), str(tmp_path / "full"))
  tr.run()
  ref, ref_ema = jax.device_get((tr.state.params, tr.state.ema_params))
  tr.close()
  tr = loop.Trainer(ar_config(data_dir, **over), str(tmp_path / "resume"))
  tr.run(until_step=2)
  tr.close()
  cfg = ar_config(data_dir, **over)
  tr = loop.Trainer(cfg, str(tmp_path / "resume"))
  tr.run()
  got, ema = jax.device_get((tr.state.params, tr.state.ema_params))
  tr.close()
  assert int(tr.state.step) == 4
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)  # noqa: E731
  jax.tree_util.tree_map(close, ref, got)
  jax.tree_util.tree_map(close, ref_ema, ema)
  assert not np.allclose(ema["tok_embedding"], got["tok_embedding"])  # EMA differs
  # load_ar: config.json (as `vft train` writes it) + the latest checkpoint's EMA params.
  wd = tmp_path / "resume"
  (wd / "config.json").write_text(cfg.to_json_best_effort(indent=2))
  model, params, config, info = ar_task.load_ar(str(wd))
  assert config.task == "ar" and model.cfg.vocab_size == VOCAB
  assert info["step"] == 4 and info["ema"] and info["tokens_shape"] == [T, N]
  assert info["vocab_size"] == VOCAB and len(info["label_names"]) == CLASSES
  jax.tree_util.tree_map(np.testing.assert_array_equal, ema, jax.device_get(params))
  # The restored model gives the trained model's logits.
  seq = jnp.zeros((2, T * N), jnp.int32)
  lab = jnp.asarray([0, 3])
  np.testing.assert_array_equal(model.apply({"params": params}, seq, label=lab),
                                tr.model.apply({"params": ema}, seq, label=lab))
  with pytest.raises(FileNotFoundError, match="config.json"):
    ar_task.load_ar(str(tmp_path / "full"))


def test_load_ar_restores_ema_or_params(data_dir, tmp_path):
  """A checkpoint as the Trainer saves it (no training: random params, EMA = params + 1)."""
  from vft import checkpoint as ckpt_lib
  cfg = ar_config(data_dir, **{"optim.ema_decay": 0.9})
  task, tx = ar_task.ARTask(cfg, data_dir), optim_lib.make_optimizer(cfg)
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  for ema_on in (True, False):
    st, _ = state_lib.init_state_from(task.init_params, tx, jax.random.key(1), ema_on, mesh,
                                      sharding.DEFAULT_RULES)
    if ema_on:
      st = st.replace(ema_params=jax.tree_util.tree_map(lambda x: x + 1, st.params))
    wd = tmp_path / str(ema_on)
    ckpt = ckpt_lib.Checkpointer(str(wd / "checkpoints"), use_async=False)
    ckpt.save(7, st)
    ckpt.close()
    cfg.optim.ema_decay = 0.9 if ema_on else 0.0
    (wd / "config.json").write_text(cfg.to_json_best_effort(indent=2))
    model, params, config, info = ar_task.load_ar(str(wd))
    assert info["step"] == 7 and info["ema"] == ema_on and config.model.vocab_size == VOCAB
    assert info["label_names"] == [f"class{i}" for i in range(CLASSES)]
    want = jax.device_get(st.ema_params if ema_on else st.params)
    jax.tree_util.tree_map(np.testing.assert_array_equal, want, jax.device_get(params))
    assert model.cfg == task.model.cfg
  with pytest.raises(ValueError, match="not an AR run"):
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "config.json").write_text(json.dumps({"task": "tokenizer"}))
    ar_task.load_ar(str(tmp_path / "tok"))


@pytest.mark.slow  # ~1.5 min; the default suite proves the sharded step in the grad-accumulation test
def test_sharded_step_equals_single_device(data_dir):
  cfg = ar_config(data_dir, **{"model.dropout": 0.0, "model.attn_dropout": 0.0})
  task, tx = ar_task.ARTask(cfg, data_dir), optim_lib.make_optimizer(cfg)
  records = pipeline.load_split(data_dir, "train", fields=task.fields)[:8]
  batch = {f: np.stack([r[f] for r in records]) for f in task.fields}
  results = []
  for mesh in (sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1]),
               sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})):
    st, shard = state_lib.init_state_from(task.init_params, tx, jax.random.key(0), False, mesh,
                                          sharding.DEFAULT_RULES)
    step = jit_train_step(task.model, tx, cfg, mesh, sharding.DEFAULT_RULES, shard,
                          loss_fn=task.loss_fn, donate=False)
    bsh = sharding.batch_sharding(mesh)
    st, m = step(st, jax.device_put(batch, bsh))
    st, m = step(st, jax.device_put(batch, bsh))
    results.append((jax.device_get(st.params), float(m["loss"]), shard))
  (p1, l1, _), (p8, l8, shard8) = results
  assert abs(l1 - l8) < 1e-5 * max(1.0, abs(l1)), (l1, l8)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
                         p1, p8)
  specs = [s.spec for s in jax.tree_util.tree_leaves(shard8.params)]
  assert any("fsdp" in str(s) for s in specs) and any("tensor" in str(s) for s in specs)


@pytest.mark.slow  # default-suite budget (issue 14 stop); a sibling covers the path
def test_class_condition_dropout_gives_null_class(data_dir, tmp_path):
  cfg = ar_config(data_dir, **{"train.cfg_dropout": 0.5, "model.dropout": 0.0,
                               "model.attn_dropout": 0.0})
  task = ar_task.ARTask(cfg, data_dir)
  shares = [np.mean(task.null_rows(jax.random.key(i), 64)) for i in range(20)]
  assert 0.4 < np.mean(shares) < 0.6, np.mean(shares)
  tr = loop.Trainer(cfg, str(tmp_path))
  params, batch = tr.state.params, jax.device_get(tr.next_batch())
  tr.close()
  train_loss = jax.jit(task.make_loss_fn(train=True))
  eval_loss = jax.jit(task.make_loss_fn(train=False))
  seen_null = 0
  for i in range(4):
    key = jax.random.key(i)
    null = np.asarray(task.null_rows(jax.random.split(key)[0], len(batch["label"])))
    seen_null += null.sum()
    # The train loss (condition dropout on, model dropout 0) is the conditional loss of a batch
    # whose dropped rows carry no label (label -1 -> the null class num_classes).
    dropped = dict(batch, label=np.where(null, -1, batch["label"]))
    np.testing.assert_allclose(float(train_loss(params, batch, key)[0]),
                               float(eval_loss(params, dropped, key)[0]), rtol=1e-6)
  assert seen_null > 0
  # ... and the null class is a condition of its own: it changes the logits.
  seq = task.sequence(jnp.asarray(batch["tokens"]))
  lab = jnp.asarray(batch["label"])
  a = task.model.apply({"params": params}, seq, label=lab)
  b = task.model.apply({"params": params}, seq, **task.conditions(batch, jnp.ones(len(lab), bool)))
  assert not np.allclose(a[:, 0], b[:, 0])
  assert np.all(np.asarray(task.conditions(batch, jnp.ones(len(lab), bool))["label"]) == CLASSES)


def test_budget_trains_on_first_k_tokens_per_frame(data_dir, tmp_path):
  cfg = ar_config(data_dir, **{"train.budget": 2, "total_steps": 2})
  tr = loop.Trainer(cfg, str(tmp_path))
  assert tr.task.seq_len == T * 2
  batch = jax.device_get(tr.next_batch())
  seq = np.asarray(tr.task.sequence(jnp.asarray(batch["tokens"])))
  # time_first: token 0 of every frame, then token 1 of every frame.
  np.testing.assert_array_equal(
      seq, np.asarray(batch["tokens"])[:, :, :2].transpose(0, 2, 1).reshape(-1, T * 2))
  np.testing.assert_array_equal(seq, np.asarray(order.to_sequence(
      jnp.asarray(batch["tokens"]), "time_first", budget=2)))
  # Tokens past the budget do not enter the loss.
  loss_fn = jax.jit(tr.task.make_loss_fn(train=False))
  other = dict(batch, tokens=np.concatenate(
      [batch["tokens"][:, :, :2], (batch["tokens"][:, :, 2:] + 7) % VOCAB], axis=2))
  key = jax.random.key(0)
  assert float(loss_fn(tr.state.params, batch, key)[0]) == float(
      loss_fn(tr.state.params, other, key)[0])
  metrics = tr.run()
  tr.close()
  assert np.isfinite(metrics["loss"])


def test_errors_for_mismatched_token_dataset(data_dir, tmp_path):
  with pytest.raises(ValueError, match="vocab_size=64.*config.model.vocab_size=32"):
    ar_task.ARTask(ar_config(data_dir, **{"model.vocab_size": 32}), data_dir)
  with pytest.raises(ValueError, match="label_names has 12 classes.*num_classes=10"):
    ar_task.ARTask(ar_config(data_dir, **{"model.num_classes": 10}), data_dir)
  with pytest.raises(ValueError, match="exceed config.model.max_len=16"):
    ar_task.ARTask(ar_config(data_dir, **{"model.max_len": 16}), data_dir)
  with pytest.raises(ValueError, match="budget=5: must be in"):
    ar_task.ARTask(ar_config(data_dir, **{"train.budget": 5}), data_dir)
  with pytest.raises(ValueError, match="order='random'"):
    ar_task.ARTask(ar_config(data_dir, **{"train.order": "random"}), data_dir)
  with pytest.raises(ValueError, match="text_dim=8 needs 'text_emb'"):
    ar_task.ARTask(ar_config(data_dir, **{"model.text_dim": 8}), data_dir)
  wide = write_token_dataset(tmp_path / "wide", num_train=2, num_eval=0, n=8)
  with pytest.raises(ValueError, match="8 tokens = 40 exceed"):
    ar_task.ARTask(ar_config(wide), wide)
  latents = tmp_path / "latents"
  with ShardWriter(latents, "train") as w:
    w.write({"latents": np.zeros((5, 4, 4, 8), jnp.bfloat16), "video_id": "x"})
  with pytest.raises(ValueError, match="no 'tokens' field.*tokenize-dataset"):
    loop.Trainer(ar_config(latents), str(tmp_path / "run"))


def test_grad_accumulation_equals_full_batch(data_dir):
  """train.grad_accum_steps=2 on a 2x2x2 mesh (microbatches of 4 rows, each still sharded over
  the batch axes; FSDP / tensor-sharded state) gives the update of the full batch of 8 on one
  device: the AR loss is a mean
  over equal-size microbatches and, without dropout, deterministic. Round-off only (fp32)."""
  base = {"model.dropout": 0.0, "model.attn_dropout": 0.0, "train.cfg_dropout": 0.0}
  records = None
  results = []
  for accum, mesh in ((1, sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1},
                                             jax.devices()[:1])),
                      (2, sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}))):
    cfg = ar_config(data_dir, **base, **{"train.grad_accum_steps": accum})
    task, tx = ar_task.ARTask(cfg, data_dir), optim_lib.make_optimizer(cfg)
    records = records or pipeline.load_split(data_dir, "train", fields=task.fields)[:8]
    batch = {f: np.stack([r[f] for r in records]) for f in task.fields}
    st, shard = state_lib.init_state_from(task.init_params, tx, jax.random.key(0), False, mesh,
                                          sharding.DEFAULT_RULES)
    step = jit_train_step(task.model, tx, cfg, mesh, sharding.DEFAULT_RULES, shard,
                          loss_fn=task.loss_fn, donate=False)
    st, m = step(st, jax.device_put(batch, sharding.batch_sharding(mesh)))
    results.append((jax.device_get(st.params), float(m["loss"]), float(m["grad_norm"])))
  specs = [s.spec for s in jax.tree_util.tree_leaves(shard.params)]  # the 2x2x2 run's
  assert any("fsdp" in str(s) for s in specs) and any("tensor" in str(s) for s in specs)
  (p1, l1, g1), (p2, l2, g2) = results
  assert abs(l1 - l2) < 1e-5 * abs(l1) and abs(g1 - g2) < 1e-4 * g1, (l1, l2, g1, g2)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
                         p1, p2)
  # The microbatches differ (a loss over the first half alone is not the full-batch loss).
  half = {f: np.stack([r[f] for r in records[:4]]) for f in task.fields}
  st, _ = state_lib.init_state_from(task.init_params, tx, jax.random.key(0), False,
                                    sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1},
                                                       jax.devices()[:1]),
                                    sharding.DEFAULT_RULES)
  l_half, _ = jax.jit(task.loss_fn)(st.params, half, jax.random.key(0))
  assert abs(float(l_half) - l1) > 1e-4, (float(l_half), l1)


def test_grad_accumulation_must_divide_the_batch(data_dir):
  cfg = ar_config(data_dir, **{"train.grad_accum_steps": 3})
  task, tx = ar_task.ARTask(cfg, data_dir), optim_lib.make_optimizer(cfg)
  records = pipeline.load_split(data_dir, "train", fields=task.fields)[:8]
  batch = {f: np.stack([r[f] for r in records]) for f in task.fields}
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  st, shard = state_lib.init_state_from(task.init_params, tx, jax.random.key(0), False, mesh,
                                        sharding.DEFAULT_RULES)
  step = jit_train_step(task.model, tx, cfg, mesh, sharding.DEFAULT_RULES, shard,
                        loss_fn=task.loss_fn, donate=False)
  with pytest.raises(ValueError, match="grad_accum_steps=3 must divide the global batch"):
    step(st, batch)
  with pytest.raises(ValueError, match="grad_accum_steps: expected an int >= 1"):
    jit_train_step(task.model, tx, ar_config(data_dir, **{"train.grad_accum_steps": 0}), mesh,
                   sharding.DEFAULT_RULES, shard, loss_fn=task.loss_fn)
