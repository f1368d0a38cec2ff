"""Training stages (teacher, SFT/distillation, RL) and their shared pieces; the only part of ardrag that
imports Lightning."""
