"""Teacher-student adapter training: task head, LoRA distillation, artifacts, evaluation,
teacher choice. Heavy imports (torch, peft) stay inside the submodules."""
