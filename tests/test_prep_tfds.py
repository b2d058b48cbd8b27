"""TFDS: a local video folder as a versioned TFDS dataset, read back with tfds.data_source and
used as prep input (`--input tfds:local_videos/<config>:train`)."""
from __future__ import annotations

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")
pytest.importorskip("importlib_resources", reason="TFDS builders need importlib-resources")

from vft.data import pipeline, prep_config, prep_job, sources, tfds_videos  # noqa: E402
from vft.eval.report import write_video  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("tfds_videos")
  rng = np.random.default_rng(0)
  for sub, n in (("cats", 3), ("dogs", 2)):
    (root / "v" / sub).mkdir(parents=True)
    for i in range(n):
      write_video(root / "v" / sub / f"{sub}{i}.mp4",
                  rng.integers(0, 255, (24, 32, 40, 3), dtype=np.uint8), fps=8)
  (root / "v" / "dogs" / "broken.mp4").write_bytes(b"not a video")
  return root


def test_local_videos_builder_and_prep_from_tfds(folder, tmp_path):
  cfg = tfds_videos.LocalVideosConfig(name="test8", input=str(folder / "v"), fps=8.0, size=32,
                                      label_from_dir=True)
  data_dir = str(folder / "tfds")
  builder = tfds_videos.build(cfg, data_dir)
  assert builder.info.splits["train"].num_examples == 5  # the broken file is left out
  assert builder.info.metadata["labels"] == ["cats", "dogs"]
  src = tfds.data_source("local_videos/test8", split="train", data_dir=data_dir)
  by_id = {src[i]["video_id"].decode(): i for i in range(len(src))}
  ex = src[by_id["dogs/dogs1"]]
  want = tfds_videos.decode_item(sources.VideoItem(str(folder / "v/dogs/dogs1.mp4"), "x"),
                                 fps=8.0, size=32)
  np.testing.assert_array_equal(np.asarray(ex["video"]), want)  # png: lossless
  assert ex["label"] == 1 and float(ex["fps"]) == 8.0

  ds = tfds_videos.grain_dataset("tfds:local_videos/test8:train", data_dir=data_dir)
  assert len(ds) == 5
  np.testing.assert_array_equal(np.asarray(ds[by_id["dogs/dogs1"]]["video"]), want)
  items, labels = tfds_videos.list_tfds("tfds:local_videos/test8:train", data_dir=data_dir)
  assert labels == ["cats", "dogs"] and len(items) == 5
  assert {it.video_id: it.label for it in items}["cats/cats2"] == 0

  c = prep_config.default_config("tiny")
  c.progress = False
  c.clips.update(dict(num_frames=5, size=32))
  c.tfds.data_dir = data_dir
  m = prep_job.run_prep(c, "tfds:local_videos/test8:train", str(tmp_path / "from_tfds"))
  assert m["num_records"] == 5 and m["labels"] == ["cats", "dogs"]
  direct = prep_job.run_prep(c, str(folder / "v"), str(tmp_path / "from_files"))
  a = {r["video_id"]: r for r in pipeline.load_split(tmp_path / "from_tfds", "train")}
  b = {r["video_id"]: r for r in pipeline.load_split(tmp_path / "from_files", "train")}
  assert set(a) == set(b) and direct["num_skipped"] == 1
  for vid in a:  # 8 fps frames resampled to 4 fps == the file decoded at 4 fps
    np.testing.assert_array_equal(a[vid]["latents"], b[vid]["latents"])
  assert tfds_videos.parse_spec("tfds:ucf101") == ("ucf101", "train")
  assert tfds_videos.parse_spec("tfds:ucf101/ucf101_1_256:test[:10]") == (
      "ucf101/ucf101_1_256", "test[:10]")
