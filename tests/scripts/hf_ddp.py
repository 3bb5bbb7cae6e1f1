"""One rank of a 2-process CPU (gloo) Trainer run with GradDoctorCallback; RANK etc. come from the environment.

    python hf_ddp.py OUT_DIR    (run once per rank; the test starts both)
"""
import sys
from pathlib import Path

import torch
from hf_trainer import Tokens
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from graddoctor.integrations.transformers import GradDoctorCallback

if __name__ == "__main__":
    out = Path(sys.argv[1])
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=128, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                                       bos_token_id=0, eos_token_id=0))
    doctor = GradDoctorCallback(every=1, store=out / "runs.db")
    args = TrainingArguments(output_dir=str(out), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-3,
                             report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True, use_cpu=True,
                             seed=0, ddp_backend="gloo")
    trainer = Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=[doctor])
    trainer.train()
    rank = trainer.args.process_index
    doctor.trace.save(out / f"trace-{rank}.npz")
    print(f"rank {rank} of {trainer.args.world_size}: run {doctor.run_id}")
