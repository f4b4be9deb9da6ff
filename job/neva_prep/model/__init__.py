"""The model step: HF LLaMA -> .nemo, the tokenizer patch, and the step that ties them together."""
