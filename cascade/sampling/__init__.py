"""What a fit draws, on the training device: a pool of whole cases resident there, slabs and
patches cropped from it in one gather per batch, and their augmentation as batch tensor ops.

The host's only per-step work is reading whole cached cases (one sequential read each) for the
pool; everything per sample (the crop, flips, intensity changes) is batched on the device.
"""
