"""probe: train many small sequence models on synthetic tasks to map what each mixer can and cannot do.

    import probe
    model = probe.build_model("attention", vocab_size=8192, d_model=64, n_layers=2, max_seq_len=256)
    probe.list_archs()
"""
__version__ = "0.1.0"

from .errors import ProbeError  # noqa: E402
from .model import build_model, list_archs  # noqa: E402

__all__ = ["ProbeError", "build_model", "list_archs", "__version__"]
