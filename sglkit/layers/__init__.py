"""Model layers: the building blocks models are made of (linear, embedding, norm, rotary, activation, attention)."""
