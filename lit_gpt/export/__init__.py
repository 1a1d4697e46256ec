"""Exports of litscale checkpoints: ``python -m lit_gpt.export hf CKPT OUT`` (see ``lit_gpt.export.hf``)."""
