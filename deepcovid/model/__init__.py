"""Transfer learning: architectures and weights, image datasets, backbone features, training."""
