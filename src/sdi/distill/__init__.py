"""Score-distillation rules. Every rule is the update of paper Eq. 10,

    x0 <- x0 - w(t) [eps_theta(sqrt(a_t) x0 + sqrt(1 - a_t) kappa, y) - kappa],

and rules differ only in how the timestep t (``timesteps.py``) and the noise kappa (``noise.py``)
are chosen: fresh Gaussian noise is SDS, DDIM inversion is SDI, a cached prediction is DDIM itself.
"""
