"""One way to turn a seed into randomness: a :class:`numpy.random.Generator`.

thresher never touches numpy's or torch's global random state; every random
choice takes a seed or a generator from the caller.
"""

from __future__ import annotations

import numpy as np

from thresher.exceptions import parameter_error

SeedLike = int | np.random.Generator | None


def as_generator(seed: SeedLike, owner: str = "thresher") -> np.random.Generator:
    """Return a generator for ``seed``: an int (>= 0), an existing generator, or None (seed 0).

    None means the documented default seed 0, not fresh entropy: the same call
    gives the same result unless the caller asks otherwise.
    """
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        seed = 0
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise parameter_error(owner, "seed", "an int >= 0 or a numpy.random.Generator", seed)
    return np.random.default_rng(int(seed))


def derive_seed(seed: int, *keys: int | str) -> int:
    """A child seed for one part of the work (a partition, an epoch), independent of the others.

    Derived from the parent seed and the keys only, so a partition gets the
    same stream whatever the number of workers or the order tasks run in.
    """
    entropy = [int(seed)] + [_key_to_int(k) for k in keys]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def _key_to_int(key: int | str) -> int:
    if isinstance(key, str):
        import xxhash

        return xxhash.xxh64_intdigest(key.encode("utf-8"))
    return int(key)
