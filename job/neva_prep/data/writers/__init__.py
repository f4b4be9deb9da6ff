"""Writers: the formats one merged dataset (`DST/NAME.json`) is written out in, one module per format.

`energon.py` writes Megatron-Energon WebDataset shards with `.nv-meta/` (NeMo 2, Megatron-Bridge). The NeMo 1
JSON array is still written by `data/convert.py` + `data/merge.py`; a third format is one new module here.
"""
