"""Every `configs/*.py` variant builds: training configs build their model and one train step
lowers (big ones: abstract state via jax.eval_shape, `jit(step).lower(...)` only) or compiles
(tiny ones), through the training's own state / step / sharding code; prep and eval configs
load and match the model configs they feed."""
import dataclasses
import glob
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vft import config_lib, flow, sharding
from vft.data import clips as data_clips
from vft.eval.checkpoint_eval import EvalSettings
from vft.models.vae import make_codec
from vft.train import loop
from vft.train import optimizer as optim_lib
from vft.train import state as state_lib
from vft.train.step import jit_train_step

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")

# (file, variant): every variant each file's get_config defines. All lower in the default suite;
# the tiny (CPU) ones also compile, in the slow suite (20-60 s each here); paper-size ones are
# never compiled (minutes and memory a test should not take).
TINY = [("demo.py", None), ("demo.py", "smoke"), ("finetune_decoder_demo.py", None),
        ("finetune_decoder_demo.py", "smoke")]
TRAIN = TINY + [("tokenizer_d12_d12.py", None), ("tokenizer_d12_d12.py", "small_batch"),
                ("tokenizer_d18_d18.py", None), ("tokenizer_d18_d28.py", None),
                ("finetune_decoder_d18_d28.py", None),
                ("finetune_decoder_d18_d28.py", "small_batch")]
PREP = [None, "k600_128", "k600_256", "long_81", "demo", "tiny"]
# AR configs (configs/ar_*.py): every variant builds its model abstractly.
AR = ([("ar_c2v.py", a) for a in (None, "49m", "85m", "201m", "393m", "679m", "1.33b", "2.29b",
                                  "demo", "tiny")]
      + [("ar_t2v.py", a) for a in (None, "400m", "1.1b", "2b", "5.2b", "5.2b_4x", "long",
                                    "demo", "tiny")])
# prep variant -> the training configs whose data it makes (same latent shape)
PREP_FOR = {"k600_128": ["tokenizer_d12_d12.py", "tokenizer_d18_d18.py"],
            "k600_256": ["tokenizer_d18_d28.py", "finetune_decoder_d18_d28.py"]}
# eval config -> the training config of the model it evaluates
EVAL_OF = {"eval_demo.py": "demo.py", "eval_d18_d28.py": "tokenizer_d18_d28.py"}


def _config(name, arg=None):
  """`get_config(arg)` of configs/<name>, or `get_config()` without a variant (as
  ml_collections' config_flags call it)."""
  if arg is not None:
    return config_lib.sibling_config(os.path.join(CONFIGS, name), name, arg)
  spec = importlib.util.spec_from_file_location(f"_test_config_{name[:-3]}",
                                                os.path.join(CONFIGS, name))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _latent_spec(config) -> list[int]:
  """[T', h, w, C] of the config's clips (config.data.clip_len x size), as prep makes them."""
  c = config.codec
  if c.name == "patch":
    return list(make_codec(c).latent_shape(int(config.data.clip_len), int(config.data.size),
                                           int(config.data.size)))
  size = int(config.data.size) // int(c.spatial_factor)  # vidtok: no weights needed for shapes
  return [1 + (int(config.data.clip_len) - 1) // int(c.time_factor), size, size,
          int(config.model.latent_channels)]


def _abstract_batch(config, spec, batch_sharding) -> dict:
  """The train batch as ShapeDtypeStructs: latents bf16 (as stored), REPA targets if used."""
  gbs = int(config.data.global_batch_size)
  batch = {"latents": jax.ShapeDtypeStruct((gbs, *spec), jnp.bfloat16, sharding=batch_sharding)}
  if float(config.train.get("repa_weight", 0.0)) > 0:
    p = [int(x) for x in config.model.patch_size]
    grid = [spec[0] // p[0], spec[1] // p[1], spec[2] // p[2]]
    batch["repa"] = jax.ShapeDtypeStruct((gbs, *grid, int(config.model.repa_dim)), jnp.float32,
                                         sharding=batch_sharding)
  return batch


def test_every_config_file_is_covered():
  names = {os.path.basename(p) for p in glob.glob(os.path.join(CONFIGS, "*.py"))}
  assert names == ({n for n, _ in TRAIN} | {"prep_video.py"} | set(EVAL_OF)
                   | {n for n, _ in AR}), names


def _lower_one_step(config):
  """Builds the model and lowers one train step on abstract state and batch, with the
  training's state, step, optimizer and sharding code -> (lowered, abstract state, model)."""
  assert config.job in ("train", "demo")
  spec = _latent_spec(config)
  model = loop.build_model(config, spec)  # checks channels against config.model
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules_from_config(config.sharding_rules)
  gbs = int(config.data.global_batch_size)
  assert gbs % sharding.num_batch_shards(mesh, rules) == 0, gbs
  tx = optim_lib.make_optimizer(config)
  use_ema = float(config.optim.get("ema_decay", 0.0)) > 0
  state = state_lib.abstract_state(model, tx, (1, *spec), use_ema, mesh, rules)
  state_sharding = jax.tree_util.tree_map(lambda a: a.sharding, state)
  batch_sharding = sharding.batch_sharding(mesh, rules)
  batch = _abstract_batch(config, spec, batch_sharding)
  jitted = jit_train_step(model, tx, config, mesh, rules, state_sharding)
  return jitted.lower(state, batch), state, model


def _ids(cases):
  return [f"{n}:{a}" if a else n for n, a in cases]


@pytest.mark.parametrize("name,arg", TRAIN, ids=_ids(TRAIN))
def test_train_config_builds_and_one_step_lowers(name, arg):
  config = _config(name, arg)
  lowered, state, model = _lower_one_step(config)
  out_state, metrics = lowered.out_info
  assert jax.tree_util.tree_structure(out_state) == jax.tree_util.tree_structure(state)
  assert metrics["loss"].shape == () and "grad_norm" in metrics
  assert sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(state.params)) > 0
  flow.eval_budgets(model.cfg.num_registers, config.eval.budgets, "config.eval.budgets")


@pytest.mark.slow
@pytest.mark.parametrize("name,arg", TINY, ids=_ids(TINY))
def test_tiny_train_config_step_compiles(name, arg):
  lowered, _, _ = _lower_one_step(_config(name, arg))
  lowered.compile()


@pytest.mark.parametrize("name,arg", AR, ids=_ids(AR))
def test_ar_config_builds_its_model(name, arg):
  from vft.models.ar import ARConfig, ARTransformer
  c = _config(name, arg)
  cfg = ARConfig.from_config(c.model)
  seq = int(c.train.get("budget") or 0) or None
  length = cfg.max_len if seq is None else 21 * seq  # the long-video variant: 21 frames x K
  cond = {}
  if cfg.num_classes:
    cond["label"] = jnp.zeros((1,), jnp.int32)
  if cfg.text_dim:
    cond["text"] = jnp.zeros((1, 8, cfg.text_dim), jnp.bfloat16)
  model = ARTransformer(cfg)

  def build():
    params = model.init(jax.random.key(0), jnp.zeros((1, length), jnp.int32), **cond)
    return params, model.apply(params, jnp.zeros((1, length), jnp.int32), **cond)

  params, logits = jax.eval_shape(build)
  assert logits.shape == (1, length, cfg.vocab_size) == (1, length, 64000)
  assert sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(params)) > 0
  assert cfg.width % cfg.num_heads == 0 and length <= cfg.max_len
  if arg not in ("demo", "tiny"):  # the paper's recipe (Tables 6, 7)
    assert (cfg.width, cfg.num_heads, cfg.max_len) == (64 * cfg.depth, cfg.depth, 1280)
    assert cfg.dropout == (0.1 if name == "ar_c2v.py" else 0.0)
  o = c.optim
  assert (o.weight_decay, o.grad_clip) == (0.05, 1.0)
  if c.total_steps > 100:
    assert abs(o.warmup_steps - 0.025 * c.total_steps) <= 1


@pytest.mark.parametrize("arg", PREP)
def test_prep_config_loads_and_feeds_its_training_configs(arg):
  c = _config("prep_video.py", arg)
  clip = data_clips.ClipSpec.from_config(c.clips)
  assert clip.num_frames >= 1 and clip.size > 0
  factors = (int(c.codec.spatial_factor), int(c.codec.time_factor))
  if c.codec.name == "patch":
    make_codec(c.codec).latent_shape(clip.num_frames, clip.size, clip.size)
  for train_name in PREP_FOR.get(arg, []):
    train = _config(train_name)
    assert (clip.num_frames, clip.size) == (train.data.clip_len, train.data.size), train_name
    assert c.codec.name == train.codec.name and factors == (
        int(train.codec.spatial_factor), int(train.codec.time_factor)), train_name


@pytest.mark.parametrize("name", sorted(EVAL_OF))
def test_eval_config_loads_and_fits_its_model(name):
  c = _config(name)
  fields = {f.name for f in dataclasses.fields(EvalSettings)}
  assert set(c.keys()) <= fields, sorted(set(c.keys()) - fields)
  settings = EvalSettings(**c.to_dict())
  train = _config(EVAL_OF[name])
  model = loop.build_model(train, _latent_spec(train))
  flow.eval_budgets(model.cfg.num_registers, settings.budgets, f"{name}: budgets")
  assert settings.num_frames == train.data.clip_len
  if c.get("size"):
    assert c.size == train.data.size
