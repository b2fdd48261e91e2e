"""Stand-in of modules/sd_vae.py: which VAE file is loaded (None: the checkpoint's own VAE)."""

loaded_vae_file = None
