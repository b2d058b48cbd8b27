"""Video codecs ("VAEs") that map RGB video to the latent space the tokenizer works in."""
from vft.models.vae.base import VideoCodec, check_num_frames, num_latent_frames
from vft.models.vae.patch_codec import PatchCodec
from vft.models.vae.vidtok import VidTokCodec, VidTokConfig

__all__ = ["VideoCodec", "PatchCodec", "VidTokCodec", "VidTokConfig", "check_num_frames",
           "num_latent_frames", "make_codec"]

CODECS = ("patch", "vidtok")


def make_codec(cfg) -> VideoCodec:
  """Builds the codec named by a `config.codec` ConfigDict.

  patch:  spatial_factor, time_factor (4), pool (1)
  vidtok: path (an official safetensors file holding the VAE), prefix (None: found from the
          keys, e.g. "vae.vidtok."), dtype ("float32" or "bfloat16" convolutions)
  """
  if cfg.name == "patch":
    return PatchCodec(spatial_factor=cfg.spatial_factor, time_factor=cfg.get("time_factor", 4),
                      pool=cfg.get("pool", 1))
  if cfg.name == "vidtok":
    path = cfg.get("path", None)
    if not path:
      raise ValueError("config.codec.path: the vidtok codec needs the path of a safetensors file "
                       "with the VAE weights (an official VideoFlexTok or VidTok checkpoint)")
    return VidTokCodec.from_safetensors(str(path), prefix=cfg.get("prefix", None) or None,
                                        dtype=cfg.get("dtype", "float32"))
  raise ValueError(f"config.codec.name: unknown codec {cfg.name!r}; expected one of {list(CODECS)}")
