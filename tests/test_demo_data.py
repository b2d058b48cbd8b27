"""The demo's class-labelled synthetic clips and their label/caption fields in the demo dataset."""
import numpy as np

from vft.data import pipeline, synthetic
from vft.data.prep import prep_demo_dataset
from vft.data.writer import read_manifest
from vft.models.vae import PatchCodec


def test_make_class_video_is_deterministic_and_labelled():
  video, label, caption = synthetic.make_class_video(3, num_frames=9, size=32)
  again = synthetic.make_class_video(3, num_frames=9, size=32)
  np.testing.assert_array_equal(video, again[0])
  assert (label, caption) == again[1:]
  assert video.shape == (9, 32, 32, 3) and video.dtype == np.uint8
  labels = {synthetic.make_class_video(s, 5, 16)[1] for s in range(200)}
  assert labels == set(range(len(synthetic.LABEL_NAMES))) and len(synthetic.LABEL_NAMES) == 12
  for s in range(20):
    v, lab, cap = synthetic.make_class_video(s, 9, 32)
    shape, motion = synthetic.LABEL_NAMES[lab].split()
    assert f" {shape} moving {synthetic._MOTION_TEXT[motion]} on " in cap, cap
    assert np.abs(np.diff(v.astype(np.float32), axis=0)).mean() > 0.5  # the shape moves
  try:
    synthetic.make_class_video(0, num_frames=0)
  except ValueError as e:
    assert "num_frames" in str(e)
  else:
    raise AssertionError("num_frames=0 accepted")


def test_demo_prep_writes_label_caption_and_label_names(tmp_path):
  manifest = prep_demo_dataset(tmp_path, PatchCodec(spatial_factor=8, pool=4),
                               num_train_synthetic=4, num_eval_synthetic=2, clip_len=9, size=32,
                               train_real=(), eval_real=(), batch_size=4, progress=False)
  assert manifest == read_manifest(tmp_path)
  for split, n in (("train", 4), ("eval", 2)):
    assert manifest["splits"][split]["meta"]["label_names"] == list(synthetic.LABEL_NAMES)
    for r in pipeline.load_split(str(tmp_path), split, fields=("label", "caption", "video_id")):
      seed = int(r["video_id"].split("/")[1]) + (5_000_000 if split == "eval" else 0)
      _, label, caption = synthetic.make_class_video(seed, 9, 32)
      assert (r["label"], r["caption"]) == (label, caption)
