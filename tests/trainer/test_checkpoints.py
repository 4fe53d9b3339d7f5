"""Checkpoints in S3: the newest complete one is found and restored, older ones are pruned, and a folder
without its COMPLETE marker (an attempt killed while uploading) is never resumed from."""

from __future__ import annotations

from kubetune_api.spec import S3Spec
from kubetune_trainer.checkpoints import Checkpoints
from kubetune_trainer.distributed import ProcessGroup
from kubetune_trainer.storage import ArtifactStore, Storage


def test_s3_checkpoints_resume_the_newest_complete_and_keep_the_last_k(s3, s3_env, tiny_model, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, get_scheduler

    bucket = s3.make_bucket("kt-checkpoints")
    storage = Storage(S3Spec(endpoint=s3.endpoint, addressing_style="path"))
    store = ArtifactStore(f"s3://{bucket}/runs/ns/job/abc123/", storage)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=2, target_modules=["q_proj"], lora_dropout=0.0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=10)
    checkpoints = Checkpoints(store, every_steps=2, keep=1, scratch=tmp_path)
    assert checkpoints.latest() is None
    one = ProcessGroup()  # one process: whole tensors as they are

    lora_b = next(p for n, p in model.named_parameters() if "lora_B" in n)
    for step in (2, 4):
        with torch.no_grad():
            lora_b.fill_(float(step))
        checkpoints.save(step, one.trainable_state(model), one.optimizer_state(model, optimizer), scheduler,
                         {"log": [{"event": "step", "step": step}]})
    client = s3.client()
    client.put_object(Bucket=bucket, Key="runs/ns/job/abc123/checkpoints/step-6/adapter.pt", Body=b"cut short")
    assert store.list_dirs("checkpoints") == ["step-4", "step-6"], "step-2 was pruned (keep: 1)"
    assert checkpoints.latest() == 4

    with torch.no_grad():
        lora_b.zero_()
    trainable, optimizer_state, state = checkpoints.load(4, scheduler)
    one.load_state(model, optimizer, trainable, optimizer_state)
    assert state["step"] == 4 and state["log"][-1]["step"] == 4
    assert torch.all(lora_b == 4.0)
    outside = client.list_objects_v2(Bucket=bucket, Prefix="runs/ns/job/")["Contents"]
    assert all(o["Key"].startswith("runs/ns/job/abc123/") for o in outside)
