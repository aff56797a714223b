"""What runs inside a training loop or around one; :mod:`thresher.selectors` keeps only the pure algorithms.

Modules
-------
torch_data   curated shards as PyTorch datasets (torch imported only when used)
samplers     :class:`IndexedDataset`, so a loader yields the indices whose losses are fed back
infobatch    InfoBatch's state directory and loss shards (the algorithm: :mod:`thresher.selectors.infobatch`)
al_loop      the active-learning loop: fit, score, acquire, label, record

Importing this package imports neither torch nor scikit-learn.
"""

from thresher.training.infobatch import apply_loss_shards, load_state, save_state, write_loss_shard
from thresher.training.samplers import IndexedDataset

__all__ = ["IndexedDataset", "apply_loss_shards", "load_state", "save_state", "write_loss_shard"]
