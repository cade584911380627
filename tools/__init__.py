"""What only maintains this repository (the GPU self-check); not part of the installed package."""
