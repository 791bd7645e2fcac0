"""Training: recipes, trainer construction (TRL / Seq2SeqTrainer), packing, checkpoints, launch."""
