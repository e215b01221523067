"""GPU kernels (Triton) behind the single-device op's row movers; torch fallbacks elsewhere."""
