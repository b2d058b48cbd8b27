"""Reconstruction eval of the released d18-d28 tokenizer, paper-style (App. G: MSR-VTT, 17 frames
at 256x256, 4 fps, 5k clips, budgets 1..256 tokens per latent frame):

  python -m vft.main eval --config=configs/eval_d18_d28.py \
      --config.checkpoint=/path/videoflextok_d18_d28/model.safetensors \
      --config.videos=/path/msrvtt_test_videos --config.out=runs/eval_d18_d28

The sampler settings are the release's example (`vft.api` doc); the paper's exact eval guidance
is not stated. rFVD needs thousands of clips to be comparable (N is recorded).
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.checkpoint = "videoflextok_d18_d28/model.safetensors"
  c.videos = "data/msrvtt_test"
  c.split = "eval"
  c.out = "runs/eval_d18_d28"
  c.budgets = [1, 2, 4, 8, 16, 32, 64, 128, 256]
  c.num_clips = 5000
  c.clips_per_video = 1
  c.batch_size = 8
  c.num_frames = 17
  c.size = 256
  c.fps = 4.0
  c.steps = 30
  c.guidance_scale = 20.0
  c.apg = True
  c.seed = 0
  c.fvd_frames = [16, 17]
  c.fvd_resize = "tf1"
  c.lpips_nets = ["alexnet", "vgg16"]
  c.grid_clips = 4
  c.real_stats = "runs/eval_d18_d28/real_stats.npz"
  c.fid_weights = ml_collections.FieldReference(None, field_type=str)
  return c
