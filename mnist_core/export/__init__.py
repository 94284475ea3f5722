"""A trained model as files other programs use: the run folder (model card, report, plots, ONNX, torch.export)
and the model files' contracts and loaders (the ONNX loader imports no torch)."""
