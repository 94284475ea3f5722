"""Using a trained model: `mnist predict` (files, folders, .npy, IDX) through any of the model files."""
