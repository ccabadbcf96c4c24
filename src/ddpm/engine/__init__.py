"""The training engine: loop, EMA, checkpoints and logging. It knows nothing of a particular model or of
diffusion: it is handed a model, a loss function and the data."""
