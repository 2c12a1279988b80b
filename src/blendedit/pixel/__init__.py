"""Blended Diffusion in pixel space (Avrahami et al., CVPR 2022) on OpenAI's ADM model."""
