"""Knowledge transfer: methods (losses and per-sample targets), the training loop, and transfer metrics."""
