"""The training core: one loop (`loop.train`), its batches, checkpoints and sample grids."""
