"""Failures a user can cause map to the API's exit codes with a message that says what to change."""

from __future__ import annotations

from kubetune_api.results import ExitCode, TrainerResult
from kubetune_trainer.errors import DataError, classify


def test_torch_out_of_memory_is_typed_and_says_what_to_lower():
    import torch

    typed = classify(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert typed.code == ExitCode.OUT_OF_MEMORY and typed.code.retryable
    assert "Tried to allocate 2.00 GiB" in typed.message and "training.batchSize" in typed.message


def test_a_bug_is_not_disguised_as_a_user_error():
    assert classify(KeyError("oops")) is None


def test_many_bad_rows_are_summarised_and_fit_the_termination_message():
    problems = [f"train.jsonl: row {i}: field 'output' is missing or empty" for i in range(1, 5001)]
    err = DataError("5000 invalid record(s) in the dataset", problems)
    assert "row 20:" in err.message and "row 21:" not in err.message and "and 4980 more" in err.message
    text = TrainerResult(ok=False, reason=err.code.reason, message=err.message).to_termination_message()
    assert len(text.encode()) <= 4096 and "DataInvalid" in text


def test_a_failed_upload_is_retryable_unless_the_store_denied_it():
    import pytest
    from boto3.exceptions import S3UploadFailedError

    from kubetune_trainer.errors import TrainerError
    from kubetune_trainer.storage import s3_errors

    def failure(code: str) -> TrainerError:
        with pytest.raises(TrainerError) as info, s3_errors("s3://bucket/run/adapter.safetensors", "http://s3:8333"):
            raise S3UploadFailedError(
                f"Failed to upload x to bucket/run: An error occurred ({code}) when calling the PutObject operation"
            )
        return info.value

    assert failure("InternalError").code == ExitCode.TRANSIENT and ExitCode.TRANSIENT.retryable
    denied = failure("AccessDenied")
    assert denied.code == ExitCode.ACCESS_DENIED and "s3://bucket/run/adapter.safetensors" in denied.message
