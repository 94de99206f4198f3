"""components: plain PyTorch building blocks that configs point at. Never imports `runner`."""
