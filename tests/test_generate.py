"""Generation (vft.ar.generate), class alignment (vft.eval.classify) and gFVD plumbing
(vft.eval.gen): budgets reach the decoder as keep_k, errors on bad requests, alignment scores by
construction, a trained classifier that saves and loads, real clips at ~0 gFVD of their own
statistics."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.tiny_inference import CODEC, tiny_model
from vft.api import VideoTokenizer
from vft.ar.generate import Generator, SampleSettings
from vft.eval import classify
from vft.inference.cli import to_uint8
from vft.models import ar
from vft.models import fsq as fsq_lib

FRAMES, REGISTERS = 2, 4


@pytest.fixture(scope="module")
def generator():
  tok_model, tok_params = tiny_model()
  tok = VideoTokenizer(tok_model, tok_params, CODEC, frame_size=(16, 16))
  vocab = fsq_lib.codebook_size(tok_model.cfg.fsq_levels)
  model = ar.ARTransformer(ar.ARConfig(vocab_size=vocab, depth=1, width=32, num_heads=2,
                                       max_len=FRAMES * REGISTERS, num_classes=3))
  params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32),
                               label=jnp.zeros((1,), jnp.int32)))["params"]
  return Generator(model, params, tok, num_frames=FRAMES, num_registers=REGISTERS)


SETTINGS = SampleSettings(cfg_scale=2.0, flow_steps=2, batch_size=2)


def test_budget_gives_k_tokens_per_frame_and_the_decoder_keep_k(generator):
  ids = generator.sample_ids(2, labels=[0, 2, 1], settings=SETTINGS)
  assert ids.shape == (3, FRAMES, 2) and ids.dtype == np.int32
  assert 0 <= ids.min() and ids.max() < generator.model.cfg.vocab_size
  video = generator.render(ids, SETTINGS)
  assert video.shape == (3, 5, 16, 16, 3) and video.dtype == np.uint8
  # The decoder sees keep_k = 2: whatever fills the ids past K, the render is the same, and it
  # equals the tokenizer's own detokenize at keep_k = 2 with the generator's key.
  padded = np.random.default_rng(0).integers(0, 100, (3, FRAMES, REGISTERS)).astype(np.int32)
  padded[..., :2] = ids
  key = jax.random.key(SETTINGS.seed + 1)
  want = np.concatenate([to_uint8(generator.tokenizer.detokenize(
      padded[i:i + 2], keep_k=2, steps=2, rng=jax.random.fold_in(key, c)))
      for c, i in enumerate(range(0, 3, 2))])
  np.testing.assert_array_equal(video, want)
  # Keeping all tokens renders something else.
  full = generator.tokenizer.detokenize(padded[:2], keep_k=REGISTERS, steps=2,
                                        rng=jax.random.fold_in(key, 0))
  assert np.abs(to_uint8(full).astype(int) - video[:2]).max() > 0


def test_sampling_is_seeded_and_conditioned(generator):
  a = generator.sample_ids(REGISTERS, labels=[1, 1], settings=SETTINGS)
  b = generator.sample_ids(REGISTERS, labels=[1, 1], settings=SETTINGS)
  np.testing.assert_array_equal(a, b)
  other = SampleSettings(**{**SETTINGS.to_dict(), "seed": 5})
  assert (generator.sample_ids(REGISTERS, labels=[1, 1], settings=other) != a).any()
  # Greedy decoding: the class decides the tokens.
  greedy = SampleSettings(cfg_scale=None, temperature=0.0, batch_size=3)
  g = generator.sample_ids(REGISTERS, labels=[0, 1, 2], settings=greedy)
  assert len({tuple(r.ravel()) for r in g}) > 1
  assert generator.sample_ids(1, num=2, settings=SETTINGS).shape == (2, FRAMES, 1)


def test_bad_requests_are_refused(generator):
  with pytest.raises(ValueError, match="budget 5"):
    generator.sample_ids(5, labels=[0], settings=SETTINGS)
  with pytest.raises(ValueError, match=r"class labels \[3\]"):
    generator.sample_ids(1, labels=[3], settings=SETTINGS)
  with pytest.raises(ValueError, match="give labels, text or num"):
    generator.sample_ids(1, settings=SETTINGS)
  with pytest.raises(ValueError, match=r"expected ids \[S, 2, K\]"):
    generator.render(np.zeros((1, 3, 2), np.int32))


def test_alignment_scores_by_construction():
  names_clf = ["Dog", "cat", "bird_song", "fish", "cow", "owl"]
  names_data = ["cat", "bird song", "unicorn"]
  logits = np.zeros((4, 6))
  logits[0, 1] = 5.0          # target cat (clf 1): top-1
  logits[1, [0, 3, 4, 5, 1]] = [9, 8, 7, 6, 5]  # target cat: 5th -> top-5 only
  logits[2, 0] = 5.0          # target bird song (clf 2): ranked last of the nonzero...
  logits[2, [1, 3, 4, 5]] = 4.0                 # ... 6th: neither
  res = classify.alignment(logits, [0, 0, 1, 2], names_data, names_clf)
  assert res["num_scored"] == 3 and res["unmatched_classes"] == ["unicorn"]
  assert res["top1"] == pytest.approx(1 / 3) and res["top5"] == pytest.approx(2 / 3)
  p = np.exp(logits[:3]) / np.exp(logits[:3]).sum(-1, keepdims=True)
  assert res["prob"] == pytest.approx(np.mean([p[0, 1], p[1, 1], p[2, 2]]))
  none = classify.alignment(logits[3:], [2], names_data, names_clf)
  assert none["top1"] is None and none["num_scored"] == 0
  with pytest.raises(ValueError, match="alignment"):
    classify.alignment(logits, [0, 1], names_data, names_clf)
  assert len(classify.kinetics400_labels()) == 400


def _coloured(labels, seed=0):
  """[n, 9, 24, 24, 3] uint8: class c = a square of colour c moving right, noisy background."""
  rng = np.random.default_rng(seed)
  colours = np.array([[230, 30, 30], [30, 230, 30], [30, 30, 230]])
  v = rng.integers(0, 80, (len(labels), 9, 24, 24, 3)).astype(np.uint8)
  for i, c in enumerate(labels):
    y = rng.integers(0, 12)
    for t in range(9):
      v[i, t, y:y + 10, t:t + 10] = colours[c]
  return v


def _moving(labels, seed=0):
  """[n, 9, 24, 24, 3] uint8: one white square on noise, moving along x (class 0) or y (1) in
  either sense from a random start: only the motion tells the classes apart."""
  rng = np.random.default_rng(seed)
  v = rng.integers(0, 80, (len(labels), 9, 24, 24, 3)).astype(np.uint8)
  for i, c in enumerate(labels):
    a, b = rng.integers(0, 14, 2)
    sense = rng.choice([-1, 1])
    for t in range(9):
      d = 7 + sense * (t - 4)  # 3..11
      y, x = (a, d) if c == 0 else (d, a)
      v[i, t, y:y + 8, x:x + 8] = 240
  return v


def test_video_cnn_tells_motions_apart():
  labels = np.arange(64) % 2
  held = np.arange(16) % 2
  clf = classify.train_video_cnn(_moving(labels), labels, ["along x", "along y"], steps=80,
                                 size=24, heldout=(_moving(held, 1), held))
  assert clf.info["heldout_accuracy"] >= 0.9, clf.info


def test_video_cnn_learns_saves_and_loads(tmp_path):
  labels = np.arange(48) % 3
  held = np.arange(12) % 3
  clf = classify.train_video_cnn(_coloured(labels), labels, ["red", "green", "blue"],
                                 steps=60, size=16, heldout=(_coloured(held, 1), held))
  assert clf.info["train_accuracy"] >= 0.9 and clf.info["heldout_accuracy"] >= 0.9
  path = clf.save(tmp_path / "clf")
  back = classify.load_classifier(path)
  v = _coloured(held, 2)
  np.testing.assert_allclose(back(v), clf(v), rtol=1e-6, atol=1e-6)
  assert back.label_names == ["red", "green", "blue"] and back.info == clf.info
  with pytest.raises(FileNotFoundError, match="classifier.json"):
    classify.load_classifier(str(tmp_path))
  with pytest.raises(ValueError, match="expected 'i3d'"):
    classify.load_classifier("no such thing")


@pytest.mark.slow  # I3D at 224x224 on CPU: ~1-3 min
def test_real_clips_have_zero_gfvd_against_their_own_statistics(tmp_path):
  from vft.ar import cli as ar_cli
  from vft.data.writer import ShardWriter
  from vft.eval import gen as gen_lib
  from vft.eval.fvd import FVD
  rng = np.random.default_rng(0)
  base = rng.integers(0, 255, (1, 1, 32, 32, 3))
  real = np.clip(base + rng.integers(-40, 40, (4, 16, 32, 32, 3)), 0, 255).astype(np.uint8)
  with ShardWriter(tmp_path / "data", "eval") as w:
    for v in real:
      w.write({"video": v, "latents": np.zeros((1, 2, 2, 4), np.float16)})
  fvd = FVD(batch_size=4)
  stats = ar_cli.real_stats(fvd, str(tmp_path / "real.npz"), str(tmp_path / "data"))
  assert stats.n == 4 and (tmp_path / "real.npz").is_file()
  assert gen_lib.video_stats(fvd, real).mu.shape == (400,)
  from vft.eval.frechet import stats_distance
  same = stats_distance(gen_lib.video_stats(fvd, real), stats)
  other = np.clip(real.astype(int)[:, :, ::-1] * 0.5, 0, 255).astype(np.uint8)
  diff = stats_distance(gen_lib.video_stats(fvd, other), stats)
  assert abs(same) < 1e-3 * diff and diff > 1.0
  cached = ar_cli.real_stats(fvd, str(tmp_path / "real.npz"), None)  # read back, not recomputed
  np.testing.assert_allclose(cached.mu, stats.mu)
