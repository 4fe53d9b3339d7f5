"""kubetune trainer: LoRA/QLoRA fine-tuning of a FineTuneJob, from S3 or local data to evaluated artefacts.

Nothing heavy is imported here; torch and transformers load inside the functions that need them.
"""
