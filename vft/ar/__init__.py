"""Autoregressive generation over VideoFlexTok tokens: sequence orders and sampling."""
