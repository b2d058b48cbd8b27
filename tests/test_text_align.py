"""vft.eval.text_align: frame-averaged CLIPScore from a local HF CLIP folder (a tiny random
CLIP written here with its tokenizer), checked against the model's own CLIP forward, and the
`--text_scorer` spec parsing."""
import json
import string

import jax.numpy as jnp
import numpy as np
import pytest

from vft.eval import text_align


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
  from transformers import CLIPConfig, CLIPTokenizer, FlaxCLIPModel
  d = tmp_path_factory.mktemp("clip")
  chars = string.ascii_lowercase + string.digits
  vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
  for c in chars:
    vocab.setdefault(c, len(vocab))
    vocab.setdefault(c + "</w>", len(vocab))
  (d / "vocab.json").write_text(json.dumps(vocab))
  (d / "merges.txt").write_text("#version: 0.2\n")
  CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt")).save_pretrained(str(d))
  cfg = CLIPConfig(
      text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                       num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16,
                       bos_token_id=0, eos_token_id=1, pad_token_id=1),
      vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4),
      projection_dim=16)
  FlaxCLIPModel(cfg, seed=0).save_pretrained(str(d))
  return d


def _videos(n=3, t=5, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (n, t, 40, 48, 3), dtype=np.uint8)


def test_clip_score_equals_the_models_own_similarity(clip_dir):
  scorer = text_align.load_text_scorer(f"clip:{clip_dir}")
  assert isinstance(scorer, text_align.ClipScorer)
  frame = _videos(2, 1)[:, 0]  # [2, H, W, 3]
  videos = np.repeat(frame[:, None], 4, axis=1)  # a still clip scores like its frame
  prompts = ["a red ball", "two cats 9"]
  got = scorer(videos, prompts)
  # Reference: CLIP's forward (logits_per_image = logit_scale * cosine) on the same pixels.
  tok = scorer.tokenizer(prompts, padding="max_length", truncation=True, max_length=16,
                         return_tensors="np")
  out = scorer.model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"],
                     pixel_values=scorer.pixels(frame))
  cos = np.asarray(out.logits_per_image) / float(jnp.exp(scorer.model.params["logit_scale"]))
  np.testing.assert_allclose(got, np.diag(cos), atol=1e-5)
  assert got.shape == (2,) and np.all(np.abs(got) <= 1 + 1e-6)


def test_scores_follow_the_prompts_and_frames(clip_dir):
  scorer = text_align.ClipScorer(clip_dir, num_frames=3)
  videos = _videos(3, 9)
  prompts = ["a dog runs", "snow falls", "3 boats"]
  s = scorer(videos, prompts)
  perm = [2, 0, 1]
  np.testing.assert_allclose(scorer(videos[perm], [prompts[i] for i in perm]), s[perm],
                             atol=1e-5)
  assert not np.allclose(scorer(videos, prompts[::-1]), s, atol=1e-4)
  # Only the frames it samples (0, 4, 8 of 9) count.
  other = videos.copy()
  other[:, [1, 2, 3, 5, 6, 7]] = 0
  np.testing.assert_allclose(scorer(other, prompts), s, atol=1e-6)
  other[:, 4] = 0
  assert not np.allclose(scorer(other, prompts), s, atol=1e-4)


def test_bad_specs_and_inputs_are_refused(clip_dir, tmp_path):
  with pytest.raises(ValueError, match="expected 'clip:PATH' or 'module:factory'"):
    text_align.load_text_scorer("clip")
  with pytest.raises(FileNotFoundError, match="not a directory"):
    text_align.load_text_scorer(f"clip:{tmp_path / 'missing'}")
  scorer = text_align.ClipScorer(clip_dir)
  with pytest.raises(ValueError, match="2 videos but 1 prompts"):
    scorer(_videos(2), ["x"])
  with pytest.raises(ValueError, match="uint8"):
    scorer(_videos(2).astype(np.float32), ["x", "y"])
