"""Where model weights come from and go: the published-weights zoo, checkpoint reading, the model cache."""
