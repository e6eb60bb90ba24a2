"""Pure diffusion functions: schedules as tensors, parametrizations, guidance, DDIM."""
