"""Documents: every HTML page and plot the product writes (the registry page, the per-study clinical
document, the paper's figures, case maps). The loop never imports this package (import-linter)."""
