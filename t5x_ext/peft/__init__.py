"""Parameter-efficient fine-tuning: LoRA adapters on a frozen base (`t5x_ext.peft.lora`).

lora        the reparametrisation: `LoraConfig`, `init_adapters`, `apply`, `merge`
trainer     `LoraTrainer`: a `Trainer` whose state is the adapters, the base frozen
adapters_io the adapter run's record of its base (path and fingerprint)
finetune    `finetune_lora`: fine-tune with LoRA from a base checkpoint (Python, no gin)
train       `python -m t5x_ext.peft.train --gin_file=...` (gin/runs/finetune_lora.gin)
merge       `python -m t5x_ext.peft.merge`: a full checkpoint with the adapters folded in
prompt_tuning  soft prompts (Lester et al. 2021): `PromptConfig`, `PromptTrainer`, `finetune_prompt`
train_prompt   `python -m t5x_ext.peft.train_prompt --gin_file=...` (gin/runs/finetune_prompt.gin)
"""
