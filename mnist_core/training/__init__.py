"""The model and what trains it: the MLP, its written-out backward, the steps (plain, fixed-shape, CUDA graph),
optimizer and schedule, checkpoints, the device, and the loop."""
