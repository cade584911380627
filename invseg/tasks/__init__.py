"""Tasks: what differs between segmentation and reconstruction (model, loss, data, metrics)."""
