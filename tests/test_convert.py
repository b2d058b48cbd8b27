"""Official checkpoint import/export: both config forms, translation, errors, round trips."""
from __future__ import annotations

import copy
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from vft.convert import export_official, load_official, official_config, official_tokenizer
from vft.convert import safetensors_io as sio
from vft.models.config import TokenizerConfig
from vft.models.embed import LearnedPosEmb, sincos_2d_table
from vft.models.tokenizer import VideoFlexTok

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.environ.get("VFT_FIXTURES", os.path.join(REPO, "..", "shared", "fixtures"))
TINY = os.path.join(FIXTURES, "official_tiny", "model.safetensors")
CHUNKED = os.path.join(FIXTURES, "official_tiny_chunked")
VAE_ONLY = os.path.join(FIXTURES, "vidtok_tiny", "model.safetensors")
needs = lambda p: pytest.mark.skipif(not os.path.exists(p), reason=f"fixture {p} absent")  # noqa

SMALL = dict(latent_channels=4, patch_size=(1, 2, 2), num_registers=4, max_latent_frames=3,
             posemb_max=4, head_dim=8, enc_width=16, enc_depth=1, dec_width=16, dec_depth=2,
             dec_mask="full", prefix_masking=True)


def _random_params(cfg: TokenizerConfig, seed: int = 0) -> dict:
  """Random (not zero-initialised) plain float32 params for VideoFlexTok(cfg)."""
  rng, params = np.random.default_rng(seed), {}
  for path, shape in official_tokenizer.param_shapes(cfg).items():
    node = params
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = rng.standard_normal(shape).astype(np.float32)
  return params


def _assert_trees_identical(a, b):
  fa, fb = (jax.tree_util.tree_flatten_with_path(t)[0] for t in (a, b))
  assert [p for p, _ in fa] == [p for p, _ in fb]
  for (path, x), (_, y) in zip(fa, fb):
    assert x.dtype == y.dtype and x.shape == y.shape, jax.tree_util.keystr(path)
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def _rewrite(src: str, dst: str, *, drop=(), add=None, replace=None, metadata=None,
             prefix: str = "") -> str:
  """A copy of a safetensors file with tensors dropped/added/replaced and new metadata."""
  t = {k: v for k, v in sio.read_tensors(src).items() if k not in drop}
  t.update(add or {})
  t.update(replace or {})
  md = sio.read_header(src).metadata if metadata is None else metadata
  return sio.write_file(dst, {prefix + k: v for k, v in t.items()}, md or None)


# ------------------------------------------------------------------ config forms
@needs(TINY)
def test_metadata_form_translates_and_regenerates_exactly():
  m = load_official(TINY)
  cfg = m.tokenizer_cfg
  assert (cfg.patch_size, cfg.num_registers, cfg.posemb_max, cfg.register_posemb_max) == (
      (1, 2, 2), 32, 16, 32)
  assert (cfg.head_dim, cfg.enc_width, cfg.enc_depth, cfg.dec_mask, cfg.prefix_masking) == (
      32, 64, 2, "full", True)
  assert m.report.unused_keys == [] and m.report.missing_keys == []
  assert m.chunking is None and m.vae_cfg is not None and m.vae_cfg.ch == 8
  # Our canonical config of the translated model is the file's config, key for key, and its
  # metadata strings are the file's strings.
  assert official_config.to_hydra(cfg, m.layout) == m.hydra_config
  assert official_config.to_metadata(m.hydra_config) == sio.read_header(TINY).metadata


@needs(CHUNKED)
def test_hub_form_with_prefixed_keys(tmp_path):
  ref = load_official(os.path.join(CHUNKED, "model.safetensors"))
  hub = tmp_path / "hub"
  hub.mkdir()
  _rewrite(os.path.join(CHUNKED, "model.safetensors"), str(hub / "model.safetensors"),
           metadata={"format": "pt"}, prefix=official_config.HUB_PREFIX)
  with open(os.path.join(CHUNKED, "hub_config.json")) as f:
    hub_cfg = json.load(f)
  (hub / "config.json").write_text(json.dumps(hub_cfg))
  for m in (load_official(str(hub)), load_official(str(hub / "model.safetensors")),
            load_official(str(hub / "model.safetensors"),
                          config_path=os.path.join(CHUNKED, "hub_config.json"))):
    assert m.tokenizer_cfg == ref.tokenizer_cfg
    assert m.chunking == {"chunk_size": 17, "overlap_size_frames": 1, "vae_video_sizes": [5, 8, 8]}
    assert m.report.unused_keys == [] and m.report.notes == []
    _assert_trees_identical(m.params, ref.params)
    _assert_trees_identical(m.vae_params, ref.vae_params)
  # Hub defaults are reported when config.json omits the chunking entries.
  (hub / "config.json").write_text(json.dumps({"video_flex_tok": hub_cfg["video_flex_tok"]}))
  m = load_official(str(hub))
  assert m.chunking == official_config.HUB_DEFAULTS
  assert any("chunk_size" in n for n in m.report.notes)


def test_parse_metadata_is_the_release_rule():
  md = {"a": "{'x': None, 'y': True, 'z': [1, 2], 's': 'str'}", "b": "plain", "c": "1.5"}
  assert official_config.parse_metadata(md) == {
      "a": {"x": None, "y": True, "z": [1, 2], "s": "str"}, "b": "plain", "c": 1.5}


def test_missing_config_is_an_error(tmp_path):
  p = sio.write_file(str(tmp_path / "model.safetensors"), {"a": np.zeros(2, np.float32)})
  with pytest.raises(ValueError, match="config_path"):
    load_official(p)
  with pytest.raises(FileNotFoundError, match="no such checkpoint"):
    load_official(str(tmp_path / "nothing_here"))
  (tmp_path / "empty_dir").mkdir()
  with pytest.raises(FileNotFoundError, match="needs a model.safetensors"):
    load_official(str(tmp_path / "empty_dir"))


# ------------------------------------------------------------------ errors and reports
@needs(TINY)
def test_unknown_target_is_an_error_naming_it(tmp_path):
  md = sio.read_header(TINY).metadata
  bad = md["decoder"].replace("videoflextok.model.preprocessors.nullcond.LearnedNullCond",
                              "os.system")
  p = _rewrite(TINY, str(tmp_path / "m.safetensors"), metadata={**md, "decoder": bad})
  with pytest.raises(ValueError, match=r"unknown _target_ 'os.system' at "
                                       r"decoder.module_dict.dec_latent_dropout"):
    load_official(p)


@needs(TINY)
def test_missing_tensor_is_an_error_naming_it(tmp_path):
  key = "decoder.module_dict.dec_transformer.blocks.1.attn.wk.weight"
  p = _rewrite(TINY, str(tmp_path / "m.safetensors"), drop=[key])
  with pytest.raises(ValueError, match=key.replace(".", r"\.")):
    load_official(p)
  m = load_official(p, strict=False)
  assert m.report.missing_keys == [key]
  assert "wk" not in m.params["decoder"]["transformer"]["blocks_1"]["attn"]


@needs(TINY)
def test_shape_mismatch_is_an_error_naming_it(tmp_path):
  key = "encoder.module_dict.enc_register_module.registers"
  p = _rewrite(TINY, str(tmp_path / "m.safetensors"),
               replace={key: np.zeros((16, 31, 64), np.float32)})
  with pytest.raises(ValueError, match=rf"{key.replace('.', '[.]')} has shape \(16, 31, 64\).*"
                                       r"\(16, 32, 64\)"):
    load_official(p)


@needs(TINY)
def test_unused_keys_are_reported(tmp_path):
  extra = {"decoder.module_dict.dec_extra.weight": np.ones((3,), np.float32),
           "something_else": np.zeros((1,), np.float32)}
  m = load_official(_rewrite(TINY, str(tmp_path / "m.safetensors"), add=extra))
  assert m.report.unused_keys == sorted(extra)


def _module(cfg: dict, part: str, name: str) -> dict:
  return cfg[part]["module_dict"][name]


@pytest.mark.parametrize("edit,match", [
    (lambda c: _module(c, "encoder", "enc_transformer").update(mlp_ratio=2.0),
     r"encoder.module_dict.enc_transformer: mlp_ratio=2.0"),
    (lambda c: _module(c, "encoder", "enc_patch_emb").update(flatten_patches=True),
     r"enc_patch_emb: flatten_patches=True"),
    (lambda c: _module(c, "decoder", "dec_seq_packer").update(
        mask_mode="flexible_time_block_causal_last"), r"dec_seq_packer: mask_mode"),
    (lambda c: _module(c, "encoder", "enc_posemb_module").update(read_key="enc_registers"),
     r"enc_posemb_module: reads 'enc_registers'"),
    (lambda c: c["vae"].update(tokenizer_id="other_vae"), r"tokenizer_id 'other_vae'"),
    (lambda c: _module(c, "decoder", "dec_transformer").update(dim=32),
     r"decoder widths .* differ"),
])
def test_unsupported_configs_are_clear_errors(edit, match):
  cfg = official_config.to_hydra(TokenizerConfig(**SMALL))
  edit(cfg)
  with pytest.raises(ValueError, match=match):
    official_config.translate(cfg)


# ------------------------------------------------------------------ round trips
@needs(TINY)
def test_fixture_reexport_is_bit_identical(tmp_path):
  m = load_official(TINY)
  for hydra in (None, m.hydra_config):
    p = export_official(str(tmp_path / "re.safetensors"), m.tokenizer_cfg, m.params, m.vae_cfg,
                        m.vae_params, hydra_config=hydra)
    a, b = sio.read_tensors(TINY), sio.read_tensors(p)
    assert sorted(a) == sorted(b)
    for k in a:
      assert a[k].dtype == b[k].dtype
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert sio.read_header(p).metadata == sio.read_header(TINY).metadata


VARIANTS = {
    "default": {},
    "repa_causal": dict(repa_layer=1, repa_depth=1, repa_dim=12, dec_mask="time_block_causal",
                        prefix_masking=False),
    "order_posemb_off": dict(register_order=("nested_dropout", "prefix_mask", "posemb",
                                             "null_cond"), register_posemb="none",
                             patch_size=(1, 1, 1), adaln_expansion=1),
    "prod_sincos": dict(patch_posemb="learnable_prod", register_posemb="sincos",
                        register_posemb_shape=(3, 5), dec_posemb_max=6),
    "order_prefix_first": dict(register_order=("posemb", "prefix_mask", "nested_dropout",
                                               "null_cond"), max_timestep=1000.0),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_export_import_round_trip(tmp_path, variant):
  cfg = TokenizerConfig(**{**SMALL, **VARIANTS[variant]})
  params = _random_params(cfg)
  path = export_official(str(tmp_path / "m.safetensors"), cfg, params)
  m = load_official(path)
  assert official_config.canonical(m.tokenizer_cfg) == official_config.canonical(cfg)
  assert m.report.unused_keys == [] and m.vae_cfg is None
  assert any("no VAE weights" in n for n in m.report.notes)
  _assert_trees_identical(m.params, params)
  # Export again: the same tensors and config.
  again = export_official(str(tmp_path / "m2.safetensors"), m.tokenizer_cfg, m.params)
  assert sio.read_header(again).metadata == sio.read_header(path).metadata
  a, b = sio.read_tensors(path), sio.read_tensors(again)
  assert all(np.array_equal(a[k], b[k]) for k in a) and sorted(a) == sorted(b)


def test_hub_export_and_scanned_params(tmp_path):
  cfg = TokenizerConfig(**SMALL)
  params = _random_params(cfg)
  scanned = official_tokenizer.scan(params)
  assert "blocks" in scanned["decoder"]["transformer"]
  assert scanned["decoder"]["transformer"]["blocks"]["block"]["attn"]["wq"]["kernel"].shape[0] == 2
  path = export_official(str(tmp_path / "hub"), dataclasses.replace(cfg, scan=True), scanned,
                         hub=True, chunking={"vae_video_sizes": [5, 2, 2]})
  assert set(os.listdir(path)) == {"config.json", "model.safetensors"}
  keys = sio.read_header(os.path.join(path, "model.safetensors")).tensors
  assert all(k.startswith("video_tokenizer.") for k in keys)
  m = load_official(path)
  assert m.chunking == {"chunk_size": 17, "overlap_size_frames": 1, "vae_video_sizes": [5, 2, 2]}
  _assert_trees_identical(m.params, params)
  _assert_trees_identical(official_tokenizer.unscan(scanned), params)


def test_load_as_bfloat16(tmp_path):
  cfg = TokenizerConfig(**SMALL)
  params = _random_params(cfg)
  m = load_official(export_official(str(tmp_path / "m.safetensors"), cfg, params),
                    dtype="bfloat16")
  leaves = jax.tree_util.tree_leaves(m.params)
  assert all(x.dtype == ml_dtypes.bfloat16 for x in leaves)
  want = params["encoder"]["to_latents"]["kernel"].astype(ml_dtypes.bfloat16)
  np.testing.assert_array_equal(m.params["encoder"]["to_latents"]["kernel"], want)


def test_export_rejects_a_mismatched_hydra_config_and_x_prediction(tmp_path):
  cfg = TokenizerConfig(**SMALL)
  params = _random_params(cfg)
  other = official_config.to_hydra(dataclasses.replace(cfg, dec_mask="time_block_causal"))
  with pytest.raises(ValueError, match=r"\['dec_mask'\] differ"):
    export_official(str(tmp_path / "m.safetensors"), cfg, params, hydra_config=other)
  with pytest.raises(ValueError, match="prediction"):
    export_official(str(tmp_path / "m.safetensors"), dataclasses.replace(cfg, prediction="x"),
                    params)


@needs(VAE_ONLY)
def test_vae_only_file(tmp_path):
  m = load_official(VAE_ONLY)
  assert m.tokenizer_cfg is None and m.params is None and m.report.unused_keys == []
  p = export_official(str(tmp_path / "vae.safetensors"), None, None, m.vae_cfg, m.vae_params)
  a, b = sio.read_tensors(VAE_ONLY), sio.read_tensors(p)
  assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
  assert official_config.parse_metadata(sio.read_header(p).metadata) == \
      official_config.parse_metadata(sio.read_header(VAE_ONLY).metadata)


# ------------------------------------------------------------------ model features for configs
def test_register_order_matters_only_when_ops_overlap():
  base = TokenizerConfig(**SMALL)
  swapped = dataclasses.replace(base, register_order=("posemb", "prefix_mask", "nested_dropout",
                                                      "null_cond"))
  params = _random_params(base)
  codes = jax.random.uniform(jax.random.key(3), (1, 3, 4, 6), minval=-1, maxval=1)
  x_t = jax.random.normal(jax.random.key(4), (1, 3, 4, 4, 4))
  t = jnp.array([0.6])

  fns = {cfg: jax.jit(lambda p, keep, prefix, cfg=cfg: VideoFlexTok(cfg).apply(
      {"params": p}, codes, x_t, t, keep_k=keep, prefix_len=prefix, method="decode"))
         for cfg in (base, swapped)}

  def v(cfg, keep, prefix):
    return np.asarray(fns[cfg](params, jnp.array([keep]), jnp.array([prefix])))
  for keep, prefix in ((4, 1), (2, 0)):  # one op active: the order is irrelevant
    np.testing.assert_array_equal(v(base, keep, prefix), v(swapped, keep, prefix))
  assert np.max(np.abs(v(base, 2, 1) - v(swapped, 2, 1))) > 1e-3


def test_sincos_table_matches_the_release_quirk():
  rows, cols, dim = 3, 5, 8
  # The release: meshgrid(arange(W), arange(H), indexing="ij"), flattened, read as (h w).
  gw, gh = np.meshgrid(np.arange(cols), np.arange(rows), indexing="ij")
  omega = 1.0 / 10000.0 ** (np.arange(dim // 4) / (dim // 4))
  ow, oh = gw.reshape(-1)[:, None] * omega, gh.reshape(-1)[:, None] * omega
  ref = np.concatenate([np.sin(ow), np.cos(ow), np.sin(oh), np.cos(oh)], 1).reshape(rows, cols, dim)
  np.testing.assert_allclose(sincos_2d_table(rows, cols, dim), ref, atol=1e-6)
  square = sincos_2d_table(4, 4, dim)  # square grids are not scrambled: (i, j) = (a, b)
  np.testing.assert_allclose(square[2, 3, 0], np.sin(2.0), atol=1e-6)
  np.testing.assert_allclose(square[2, 3, dim // 2], np.sin(3.0), atol=1e-6)


def test_learnable_prod_posemb():
  x = jnp.zeros((1, 2, 3, 4))
  mod = LearnedPosEmb(2, 3, combine="prod")
  params = {"posembs": jax.random.normal(jax.random.key(0), (2, 3, 4))}
  out = mod.apply({"params": params}, x)
  want = params["posembs"][0, :2, None] * params["posembs"][1, None, :3]
  np.testing.assert_allclose(np.asarray(out[0]), np.asarray(want), rtol=1e-6)


def test_translate_does_not_mutate_and_checks_every_target():
  cfg = official_config.to_hydra(TokenizerConfig(**SMALL))
  before = copy.deepcopy(cfg)
  official_config.translate(cfg)
  assert cfg == before
  rescaler = "videoflextok.flow_matching.cfg_utils.CFGWithRescale"  # real, but not allowed
  cfg["pipeline"]["cfg_rescaler"] = {"_target_": rescaler}
  with pytest.raises(ValueError, match=r"unknown _target_ .*CFGWithRescale.* at "
                                       r"pipeline.cfg_rescaler"):
    official_config.translate(cfg)
