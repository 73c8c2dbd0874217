"""Speed: our Caffe against the same FCRN-A in PyTorch, and simcep_py's image rate."""
