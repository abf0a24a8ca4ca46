"""Seeded work that leaves the caller's global random state alone.

Pyro and peft/transformers draw from the *global* generators (torch's default generator, and
for some Pyro code numpy's and Python's ``random``) and keep parameters in Pyro's global param
store. :func:`seeded` runs a block with those generators seeded from ``seed`` and, optionally,
an empty Pyro param store, and puts everything back afterwards: the block is reproducible from
its seed and a notebook's own RNG state and Pyro parameters are exactly as they were.
"""
from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch


@contextlib.contextmanager
def seeded(seed: int, *, pyro_params: bool = False) -> Iterator[None]:
    """Run the block with the global RNGs seeded by ``seed``; restore them on exit.

    Inside: torch's CPU generator (and the CUDA generators, where CUDA is already initialised),
    numpy's global ``np.random`` and Python's ``random`` are seeded with ``seed``, as
    ``pyro.set_rng_seed(seed)`` seeds them. On exit (normal or by an exception) all of them are
    back in the state they had on entry. With ``pyro_params=True`` the block also sees an empty
    Pyro param store, and the caller's store (its parameters and constraints) is back on exit;
    parameters created inside are dropped, so read them before leaving the block.

    CUDA generators that are not initialised on entry are neither seeded nor touched (seeding
    them would queue a seed for CUDA's later initialisation, outside the block).
    """
    seed = int(seed)
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    devices = list(range(torch.cuda.device_count())) if cuda else []
    py_state = random.getstate()
    np_state = np.random.get_state()
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.random.fork_rng(devices=devices))
        if pyro_params:
            import pyro

            stack.enter_context(pyro.get_param_store().scope())
        try:
            if cuda:
                torch.manual_seed(seed)  # the CPU generator and every CUDA device
            else:
                torch.default_generator.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed)
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
