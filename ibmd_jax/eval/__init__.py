"""Evaluation: paired and distribution metrics (`metrics`), and the pretrained networks behind
FID / IS (`inception`) and classifier accuracy (`resnet`), loaded from local weight files only."""
