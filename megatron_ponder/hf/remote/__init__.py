"""The transformers-native PonderLM-2 (written next to the weights of every export)."""
