"""A Hugging Face Trainer with graddoctor's callback: a tiny GPT-2 from a config, offline, on CPU.

    python examples/train_hf.py                 # needs transformers and accelerate
    python examples/train_hf.py --steps 20 --accumulate 2

The callback records every optimizer step (a step is one optimizer step, whatever the gradient
accumulation), adds its scalars to the Trainer's logs (`graddoctor/...`: they reach
TensorBoard / W&B when those report), and at the end prints the diagnosis and writes the run
and its HTML report into OUTPUT_DIR/graddoctor/.
"""
import argparse

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from graddoctor.integrations.transformers import GradDoctorCallback


class RandomTokens(torch.utils.data.Dataset):
    """Token sequences to model (random: the example is about the gradients, not the text)."""

    def __init__(self, n: int = 256, length: int = 32, vocab: int = 256, seed: int = 0):
        self.ids = torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(seed))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--accumulate", type=int, default=1, help="gradient accumulation steps")
    p.add_argument("--output-dir", default="hf-output")
    args = p.parse_args()

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=256, n_positions=64, n_embd=64, n_layer=4, n_head=4, bos_token_id=0,
                        eos_token_id=0)
    doctor = GradDoctorCallback(every=2)
    training = TrainingArguments(output_dir=args.output_dir, max_steps=args.steps, per_device_train_batch_size=8,
                                 gradient_accumulation_steps=args.accumulate, learning_rate=1e-3,
                                 logging_steps=2, report_to=[], save_strategy="no", disable_tqdm=True,
                                 use_cpu=True, seed=0)
    trainer = Trainer(model=GPT2LMHeadModel(config), args=training, train_dataset=RandomTokens(),
                      callbacks=[doctor])
    trainer.train()
    print("verdict:", "healthy" if doctor.diagnosis.healthy else sorted(doctor.diagnosis.kinds()))


if __name__ == "__main__":
    main()
