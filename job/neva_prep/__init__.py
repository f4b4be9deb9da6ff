"""neva-prep: prepare NeMo NeVA / VideoNeVA training (model step, data step, launchers)."""

__version__ = "0.1.0"
