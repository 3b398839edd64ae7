"""LayerT2V trainers: stage 1 (alpha VAE), stage 2 (joint layers), stage 3 (more foregrounds)."""
