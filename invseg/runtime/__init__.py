"""What every command shares: config, checkpoints, the training loop, files, devices."""
