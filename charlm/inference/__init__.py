"""Using a trained model: sampling, held-out scores, export."""
