"""Video codecs ("VAEs") that map RGB video to the latent space the tokenizer works in."""
from vft.models.vae.base import VideoCodec, check_num_frames, num_latent_frames
from vft.models.vae.patch_codec import PatchCodec

__all__ = ["VideoCodec", "PatchCodec", "check_num_frames", "num_latent_frames", "make_codec"]


def make_codec(cfg) -> VideoCodec:
  """Builds the codec named by a `config.codec` ConfigDict."""
  if cfg.name == "patch":
    return PatchCodec(spatial_factor=cfg.spatial_factor, time_factor=cfg.get("time_factor", 4))
  raise ValueError(f"config.codec.name: unknown codec {cfg.name!r}; expected one of ['patch']")
