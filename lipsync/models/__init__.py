"""Networks and their weight loading (MuseTalk VAE, UNet, Whisper encoder)."""
