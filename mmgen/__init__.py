"""mmgen: native generative multimodal models (Chameleon / CM3leon style)."""
