"""The data step: caption tables and LLaVA JSON -> NeVA / VideoNeVA records, sharded and merged.

`sources` reads inputs (one shard's byte ranges, record-aligned) into `Row`s; `records` turns a `Row` into a
validated record (the one validator every path uses); `prompts` holds the prompt lists and the choice rule.
"""
