"""Blended Latent Diffusion (Avrahami, Fried, Lischinski; SIGGRAPH 2023)."""

from blendedit.latent.pipeline import BlendedLatentDiffusion

__all__ = ["BlendedLatentDiffusion"]
