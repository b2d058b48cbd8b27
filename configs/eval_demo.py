"""`python -m vft.main eval --config=configs/eval_demo.py`: the demo checkpoint on its held-out
shards (run `vft demo` first). Any field can be overridden (--config.num_clips=4) and the
eval flags (--budgets, --steps, ...) take precedence over the fields."""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.checkpoint = "runs/demo"          # a vft workdir or an official .safetensors
  c.videos = "runs/demo/data"         # shards (manifest.json) or a folder of videos
  c.split = "eval"
  c.out = "runs/demo/eval"
  c.budgets = [1, 2, 4, 8, 16]
  c.num_clips = 8
  c.batch_size = 4
  c.num_frames = 17
  c.steps = 10                        # the demo's training-time eval setting
  c.guidance_scale = 1.0
  c.seed = 1234
  c.fvd_frames = [16, 17]
  c.fvd_resize = "tf1"
  c.lpips_nets = ["alexnet"]
  c.grid_clips = 4
  c.real_stats = ml_collections.FieldReference(None, field_type=str)
  c.fid_weights = ml_collections.FieldReference(None, field_type=str)
  return c
