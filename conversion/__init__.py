"""Converters from BLIP-2 (transformers and LAVIS) and released DASCO checkpoints into DASCO checkpoint folders."""
