"""A Hugging Face Trainer script (no graddoctor in it): a tiny GPT-2 from a config, offline, a few steps."""
import sys
import tempfile

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int = 64, length: int = 16, vocab: int = 128):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (n, length), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


if __name__ == "__main__":
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    accumulate = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=128, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=8,
                                 gradient_accumulation_steps=accumulate, learning_rate=1e-3, report_to=[],
                                 save_strategy="no", logging_steps=1, disable_tqdm=True, use_cpu=True,
                                 dataloader_num_workers=0, seed=0)
        trainer = Trainer(model=model, args=args, train_dataset=Tokens())
        trainer.train()
    print("losses", [round(h["loss"], 4) for h in trainer.state.log_history if "loss" in h])
