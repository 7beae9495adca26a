"""Evaluation metrics: LSE, FID, CSIM, LMD, PSNR/SSIM, IFC, and the report (see docs/evaluation.md)."""
